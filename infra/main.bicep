// halo-lifecycle: everything the app needs in one resource group.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
//   func azure functionapp publish <functionAppName output>
//
// See docs/deployment.md for prerequisites, the permissions to grant (Graph, Entra roles, AD
// delegation), network options, verification and roll back.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// General
// ---------------------------------------------------------------------------------------------

@description('Azure region for every resource. Flex Consumption is available in a subset of regions.')
param location string = resourceGroup().location

@description('Short prefix of every resource name (lower-case letters, digits, hyphens).')
@minLength(2)
@maxLength(10)
param namePrefix string = 'halolc'

@description('Tags for every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------
// Function app (Flex Consumption)
// ---------------------------------------------------------------------------------------------

@description('Python version of the Functions worker.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to. Each instance opens its own LDAP and Graph connections: keep it modest.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 20

@description('Replication of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'

@description('Tables created for the app\'s journal and audit trail.')
param tableNames array = [
  'journal'
  'audit'
]

// ---------------------------------------------------------------------------------------------
// Service Bus
// ---------------------------------------------------------------------------------------------

@description('Standard (default) or Premium (network isolation: with VNet integration the namespace then accepts only the function subnet).')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Messaging units when serviceBusSku is Premium.')
@allowed([
  1
  2
  4
  8
  16
])
param serviceBusPremiumCapacity int = 1

@description('Name of the work queue (LIFECYCLE_SERVICEBUS_QUEUE).')
param queueName string = 'lifecycle-work'

@description('Duplicate detection window of the queue, ISO 8601, PT20S to P7D. Fixed once the queue exists.')
param duplicateDetectionWindow string = 'P1D'

@description('Deliveries before a work item is dead-lettered. Also LIFECYCLE_MAX_DELIVERIES, so the app and the queue agree.')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int = 10

@description('Peek-lock duration of the queue, ISO 8601, at most PT5M.')
param lockDuration string = 'PT1M'

@description('Time to live of a work item, ISO 8601; an expired item is dead-lettered.')
param messageTimeToLive string = 'P14D'

// ---------------------------------------------------------------------------------------------
// Monitoring and Key Vault
// ---------------------------------------------------------------------------------------------

@description('Days the Log Analytics workspace keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

@description('Days a deleted vault or secret stays recoverable (purge protection is always on).')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Days after each deployment when the secrets it wrote are due for rotation.')
@minValue(1)
@maxValue(730)
param secretRotationDays int = 365

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

@description('Integrate the function app with a new VNet, to reach on-prem domain controllers over a VPN or ExpressRoute (peer the VNet with your hub after deployment).')
param enableVnetIntegration bool = false

@description('Address space of the new VNet; must not overlap on-prem ranges.')
param vnetAddressPrefix string = '10.60.0.0/24'

@description('Prefix of the function subnet inside vnetAddressPrefix (/27 or larger).')
param functionSubnetPrefix string = '10.60.0.0/26'

@description('DNS servers of the VNet that resolve the AD domain (e.g. the domain controllers). Empty: Azure DNS.')
param dnsServers array = []

// ---------------------------------------------------------------------------------------------
// The app's configuration (LIFECYCLE_* settings; see lifecycle/settings.py)
// ---------------------------------------------------------------------------------------------

@description('Mapping file, relative to the app root (deployed with the package).')
param mappingFile string = 'mapping.toml'

@description('Webhook authentication: any = one configured scheme must verify, all = every configured one. "none" is not allowed in Azure.')
@allowed([
  'any'
  'all'
])
param webhookAuth string = 'any'

@description('User name Halo sends with Basic authentication; empty disables Basic.')
param webhookBasicUser string = ''

@description('Largest accepted webhook body, in bytes.')
@minValue(1)
param maxBodyBytes int = 1048576

@description('Halo event display names (case-insensitive) to event kinds (created, updated, deleted).')
param haloEventMap object = {
  'user created': 'created'
  'new user': 'created'
  'user updated': 'updated'
  'user changed': 'updated'
  'user deleted': 'deleted'
  'user inactive': 'updated'
}

@description('URL of the default AD connection: ldaps://host:636 (or ldap://host:389 with adStartTls).')
param adUrl string

@description('Bind account of the default AD connection (UPN or DN of a delegated service account, never a Domain Admin).')
param adUser string

@description('Base DN searched for users, e.g. OU=People,DC=corp,DC=example,DC=com.')
param adBaseDn string

@description('CA bundle (PEM) that signed the DCs\' certificates, relative to the app root; empty trusts the system store.')
param adCaFile string = ''

@description('Name the DCs\' certificates carry when it differs from the host in adUrl; empty when it matches.')
param adTlsServerName string = ''

@description('Use StartTLS on ldap:// instead of LDAPS.')
param adStartTls bool = false

@description('LDAP timeout in seconds.')
@minValue(1)
@maxValue(120)
param adTimeoutSeconds int = 10

@description('Work items a worker instance processes at once.')
@minValue(1)
@maxValue(64)
param workerConcurrency int = 4

@description('Seconds a transient failure is retried with backoff before the item is dead-lettered.')
@minValue(1)
param retryMaxSeconds int = 86400

@description('First backoff delay, seconds.')
@minValue(1)
param retryBaseSeconds int = 2

@description('Longest backoff delay, seconds.')
@minValue(1)
param retryCapSeconds int = 300

@description('Plan and audit but change nothing in AD or Microsoft 365 (recommended for the first days in production).')
param dryRun bool = false

@description('Log level of the app.')
@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
])
param logLevel string = 'INFO'

// ---------------------------------------------------------------------------------------------
// Secrets: written to Key Vault, never to app settings. No defaults, never in a parameters file.
// ---------------------------------------------------------------------------------------------

@secure()
@minLength(12)
@description('Password of the AD bind account.')
param adBindPassword string

@secure()
@minLength(2)
@description('JSON of additional named AD connections, passwords included; {} when there are none.')
param adConnectionsJson string

@secure()
@minLength(16)
@description('Basic authentication password of the webhook (a long random value when Basic is not used).')
param webhookBasicPassword string

@secure()
@minLength(32)
@description('HMAC key of the webhook signature (a long random value when signatures are not used).')
param webhookHmacSecret string

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, namePrefix))
var prefix = toLower(namePrefix)
var deploymentContainerName = 'app-package'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${prefix}-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    workspaceName: 'log-${prefix}-${resourceToken}'
    appInsightsName: 'appi-${prefix}-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module network 'modules/network.bicep' = if (enableVnetIntegration) {
  name: 'network'
  params: {
    name: 'vnet-${prefix}-${resourceToken}'
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    functionSubnetPrefix: functionSubnetPrefix
    dnsServers: dnsServers
  }
}

var functionSubnetId = enableVnetIntegration ? network.outputs.functionSubnetId : ''

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take('st${replace(prefix, '-', '')}${resourceToken}', 24)
    location: location
    tags: tags
    skuName: storageSku
    deploymentContainerName: deploymentContainerName
    tableNames: tableNames
    allowedSubnetId: functionSubnetId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    namespaceName: 'sb-${prefix}-${resourceToken}'
    location: location
    tags: tags
    sku: serviceBusSku
    premiumCapacity: serviceBusPremiumCapacity
    queueName: queueName
    duplicateDetectionWindow: duplicateDetectionWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    messageTimeToLive: messageTimeToLive
    allowedSubnetId: functionSubnetId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: take('kv-${prefix}-${resourceToken}', 24)
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    secretRotationDays: secretRotationDays
    adBindPassword: adBindPassword
    adConnectionsJson: adConnectionsJson
    webhookBasicPassword: webhookBasicPassword
    webhookHmacSecret: webhookHmacSecret
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: identity.outputs.principalId
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    queueName: serviceBus.outputs.queueName
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

// ---------------------------------------------------------------------------------------------
// App settings: the ONE list of every setting the app and the Functions host read.
// tests/infra checks it against lifecycle.settings.app_setting_names() | HOST_SETTING_NAMES.
// Adding a setting is one line here. A secret is a Key Vault reference (plus a parameter and a
// secret in modules/keyvault.bicep), never a value.
// Not set on purpose (local mode only): LIFECYCLE_HOST, LIFECYCLE_PORT, LIFECYCLE_DATA_DIR,
// LIFECYCLE_SERVICEBUS_CONNECTION_STRING, LIFECYCLE_TABLE_CONNECTION_STRING (Azure uses the
// identity, and a connection string would take precedence over it).
// Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME, WEBSITE_RUN_FROM_PACKAGE and WEBSITE_TIME_ZONE.
// ---------------------------------------------------------------------------------------------

var identityClientId = identity.outputs.clientId
var vaultName = keyVault.outputs.name

var appSettings = union({
  // Functions host: storage and Service Bus through the user-assigned identity, no keys.
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  // Telemetry with Entra authentication (the component refuses instrumentation-key-only ingestion).
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential in the app (azure-servicebus, azure-data-tables) picks this identity.
  AZURE_CLIENT_ID: identityClientId

  // The app (lifecycle/settings.py).
  LIFECYCLE_MAPPING_FILE: mappingFile
  LIFECYCLE_QUEUE_BACKEND: 'servicebus'
  LIFECYCLE_STORE_BACKEND: 'table'
  LIFECYCLE_SERVICEBUS_NAMESPACE: serviceBus.outputs.fullyQualifiedNamespace
  LIFECYCLE_SERVICEBUS_QUEUE: serviceBus.outputs.queueName
  LIFECYCLE_TABLE_ENDPOINT: storage.outputs.tableEndpoint
  LIFECYCLE_WEBHOOK_AUTH: webhookAuth
  LIFECYCLE_WEBHOOK_BASIC_USER: webhookBasicUser
  LIFECYCLE_WEBHOOK_BASIC_PASSWORD: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=webhook-basic-password)'
  LIFECYCLE_WEBHOOK_HMAC_SECRET: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=webhook-hmac-secret)'
  LIFECYCLE_MAX_BODY_BYTES: string(maxBodyBytes)
  LIFECYCLE_HALO_EVENT_MAP: string(haloEventMap)
  LIFECYCLE_AD_URL: adUrl
  LIFECYCLE_AD_USER: adUser
  LIFECYCLE_AD_PASSWORD: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=ad-bind-password)'
  LIFECYCLE_AD_BASE_DN: adBaseDn
  LIFECYCLE_AD_START_TLS: adStartTls ? 'true' : 'false'
  // Never plaintext LDAP in Azure: not a parameter.
  LIFECYCLE_AD_ALLOW_PLAINTEXT: 'false'
  LIFECYCLE_AD_TIMEOUT_SECONDS: string(adTimeoutSeconds)
  LIFECYCLE_AD_CONNECTIONS: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=ad-connections)'
  LIFECYCLE_WORKER_CONCURRENCY: string(workerConcurrency)
  LIFECYCLE_RETRY_MAX_SECONDS: string(retryMaxSeconds)
  LIFECYCLE_RETRY_BASE_SECONDS: string(retryBaseSeconds)
  LIFECYCLE_RETRY_CAP_SECONDS: string(retryCapSeconds)
  LIFECYCLE_MAX_DELIVERIES: string(maxDeliveryCount)
  LIFECYCLE_DRY_RUN: dryRun ? 'true' : 'false'
  LIFECYCLE_LOG_LEVEL: logLevel
}, empty(adCaFile) ? {} : {
  // Only when given: an empty value would be read as the path "." rather than "no CA file".
  LIFECYCLE_AD_CA_FILE: adCaFile
}, empty(adTlsServerName) ? {} : {
  LIFECYCLE_AD_TLS_SERVER_NAME: adTlsServerName
})

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-${prefix}-${resourceToken}'
    planName: 'plan-${prefix}-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    blobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    subnetId: functionSubnetId
    appSettings: appSettings
  }
  // The host reads storage, Service Bus and Key Vault as soon as it starts: grant first.
  dependsOn: [
    roles
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output serviceBusQueueName string = serviceBus.outputs.queueName
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output keyVaultName string = keyVault.outputs.name
output storageAccountName string = storage.outputs.name
// Grant the Graph application permissions to this service principal (docs/deployment.md).
output identityPrincipalId string = identity.outputs.principalId
output identityClientId string = identity.outputs.clientId
