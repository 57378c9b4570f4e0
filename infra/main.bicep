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
  'people'
  'audit'
  'pending'
  'guard'
  'held'
  'deadletters'
  'gates'
  'requests'
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

@description('Run the worker in Azure (the Service Bus trigger). false when an on-premises `lifecycle worker` serves the queue (no network path from Azure to the DCs): the trigger is disabled.')
param cloudWorker bool = true

@description('Object id of the on-premises worker\'s service principal (an app registration with a certificate); empty: no on-premises worker. It gets the queue and table roles of modules/worker-roles.bicep.')
param onPremisesWorkerPrincipalId string = ''

@description('E-mail address (an operators\' distribution list) the alerts go to: work parked or dead-lettered, and the dead-letter count of the queue.')
param alertEmail string

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

@description('Largest accepted webhook body, in bytes (Halo batches full objects with linked objects).')
@minValue(1)
param maxBodyBytes int = 16777216

@description('Header carrying the body signature (Halo Webhook authentication_header).')
param webhookHmacHeader string = 'Token'

@description('HMAC hash of the body signature (Halo Webhook algorithm).')
@allowed([
  'sha1'
  'sha256'
  'sha512'
])
param webhookHmacAlgorithm string = 'sha256'

@description('Text encoding of the signature digest (Halo Webhook digest).')
@allowed([
  'base64'
  'hex'
])
param webhookHmacEncoding string = 'base64'

@description('Text before the digest in the signature header (Halo Webhook signature_prefix); empty for none.')
param webhookHmacPrefix string = ''

@description('A signed body is accepted only within this many seconds of its timestamp, either side.')
@minValue(1)
param webhookSignedWindowSeconds int = 600

@description('A body timestamp further ahead than this many seconds is refused, whatever the authentication.')
@minValue(0)
param webhookMaxFutureSeconds int = 300

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

@description('Seconds an item waits, rescheduled, when a set-up problem (unresolved Key Vault reference, missing mapping, storage refusing the identity) stops it; no delivery is used up.')
@minValue(1)
param setupRetrySeconds int = 600

@description('NCRONTAB schedule (with seconds, UTC) of the reconcile timer; once a day by default.')
param reconcileSchedule string = '0 0 5 * * *'

@description('NCRONTAB schedule (with seconds, UTC) of the delta poll of Halo users; every 5 minutes by default.')
param haloPollSchedule string = '0 */5 * * * *'

@description('The share of Halo\'s rate limit this service may use (other integrations of the tenant use it too), as a decimal.')
param haloRateShare string = '0.5'

@description('What the reconcile does with drift: report (audit and list, change nothing) or apply (send it).')
@allowed(['report', 'apply'])
param reconcileMode string = 'report'

@description('NCRONTAB schedule (with seconds, UTC) of the timer that releases due staged work (deletions N days after a leaver).')
param releaseSchedule string = '0 */5 * * * *'

@description('Plan and audit but change nothing in AD or Microsoft 365 (recommended for the first days in production).')
param dryRun bool = false

@description('Mass-change guard: destructive work items (leavers, deletions) allowed per window before the rest are held for approval; 0 turns the count limit off.')
@minValue(0)
param guardMaxCount int = 25

@description('Mass-change guard: the same limit as a percentage of the managed (active) people; 0 turns it off.')
@minValue(0)
@maxValue(100)
param guardMaxPercent int = 0

@description('Mass-change guard: the sliding window, seconds.')
@minValue(1)
param guardWindowSeconds int = 3600

@description('Joiners (account creations) per guard window before the rest are held for approval; 0 turns it off.')
@minValue(0)
param guardMaxJoiners int = 25

@description('Mass-change guard: actions that make a work item destructive (besides leaver and deleted lifecycles).')
param guardActions array = [
  'disable_user'
  'delete_user'
  'remove_licenses'
  'disable_mailbox'
  'delete_mailbox'
  'delete_home_folder'
]

@description('Halo instance URL, e.g. https://contoso.haloitsm.com. Empty turns the Halo API off: thin webhooks, reconciliation and write-back need it.')
param haloApiUrl string = ''

@description('Halo auth server (its base URL or its /token URL); empty discovers it through <haloApiUrl>/api/authinfo.')
param haloAuthUrl string = ''

@description('Halo tenant name (hosted Halo); empty for self-hosted, or to use what /api/authinfo names.')
param haloTenant string = ''

@description('Client ID of the Halo API application ("Client ID and Secret (Services)").')
param haloClientId string = ''

@description('OAuth scope requested from Halo.')
param haloScope string = 'all'

@description('CA bundle (PEM) for Halo, relative to the app root; empty trusts the system store.')
param haloCaFile string = ''

@description('Timeout of one Halo API request, seconds.')
@minValue(1)
@maxValue(300)
param haloTimeoutSeconds int = 30

@description('Halo API requests allowed per window (hosted Halo: 300 per 5 minutes). Per instance: divide among instances.')
@minValue(1)
param haloRateLimit int = 300

@description('The window of haloRateLimit, seconds.')
@minValue(1)
param haloRateLimitWindowSeconds int = 300

@description('Users per page when reconciliation lists Halo\'s users.')
@minValue(1)
@maxValue(1000)
param haloPageSize int = 100

@description('Default fields of the halo_writeback action: Halo user field -> template over the AD account.')
param haloWritebackFields object = {
  samaccountname: '{samaccountname}'
  activedirectory_dn: '{dn}'
}

@description('How reconciliation correlates accounts without the anchor: AD attribute -> template over the Halo user ({} for none).')
param haloReconcileFallbacks object = {
  mail: '{emailaddress}'
  userPrincipalName: '{emailaddress}'
  sAMAccountName: '{login}'
}

@description('What reconciliation does for a managed person Halo no longer lists (leaver and deleted go through the mass-change guard).')
@allowed([
  'ignore'
  'report'
  'leaver'
  'deleted'
])
param haloMissingUsers string = 'report'

@description('Ticket requests: the outcome (name, or id as digits) of the private notes posted to tickets; Halo refuses a note without one (GET /api/Outcome lists them).')
param haloNoteOutcome string = ''

@description('Ticket requests: the ticket status id to set per request outcome (awaiting_approval, scheduled, running, completed, failed, held, rejected); {} changes no status.')
param haloTicketStatuses object = {}

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
@minLength(2)
@description('JSON of more Microsoft 365 tenants (an MSP\'s customers: LIFECYCLE_GRAPH_CONNECTIONS), credentials included; {} when there are none.')
param graphConnectionsJson string

@secure()
@minLength(2)
@description('JSON of the home-folder roots (SMB shares or mounts), share passwords included; {} when home folders are not managed.')
param fileRootsJson string

@secure()
@minLength(2)
@description('JSON of the custom-script allow-list, webhook signing secrets included; {} when no scripts are allowed.')
param scriptsJson string

@description('Folder of module:function scripts, relative to the app root (deployed with the package).')
param scriptsDir string = 'scripts'

@secure()
@minLength(16)
@description('Basic authentication password of the webhook (a long random value when Basic is not used).')
param webhookBasicPassword string

@secure()
@minLength(32)
@description('HMAC key of the webhook signature (a long random value when signatures are not used).')
param webhookHmacSecret string

@secure()
@minLength(2)
@description('JSON of one signing secret per event kind ({"created": "...", "deleted": "..."}): binds ?event= to the secret; {} when not used.')
param webhookHmacSecretsJson string

@secure()
@minLength(32)
@description('Bearer token of the operator routes /api/manage/held (approve or reject work the mass-change guard held).')
param adminToken string

@secure()
@minLength(1)
@description('Client secret of the Halo API application (any placeholder when haloApiUrl is empty).')
param haloClientSecret string

// The operator console (/api/console, docs/console.md): sign-in with Microsoft Entra ID in the app
// (authorization code + PKCE through msal), because Flex Consumption does not support App Service
// Authentication. Its app registration, with the app roles of infra/console-app-roles.json
// (Console.Read, Console.Act), is created once with `az ad app create` (docs/console.md): ARM cannot
// create Entra objects, and the Graph Bicep extension is beyond the offline checks of tests/infra.
@description('Client id of the console\'s app registration (docs/console.md); empty until it exists (the console then refuses every sign-in).')
param consoleEntraClientId string = ''

@description('Hours a console sign-in lasts.')
@minValue(1)
@maxValue(24)
param consoleSessionHours int = 8

@secure()
@minLength(32)
@description('Key that signs the console\'s session cookies (shared by every instance): a long random value.')
param consoleSessionKey string

@secure()
@minLength(1)
@description('Client secret of the console\'s app registration (LIFECYCLE_CONSOLE_ENTRA_CLIENT_SECRET).')
param consoleEntraClientSecret string

// Microsoft Graph (Microsoft 365 steps). Empty graphClientId: the app's managed identity gets the tokens.
@description('Client id of an app registration for Microsoft Graph; empty to use the managed identity (recommended).')
param graphClientId string = ''

@description('Tenant (directory) id of that app registration; unused with the managed identity.')
param graphTenantId string = ''

@description('Entra ID sign-in host (another for national clouds).')
param graphAuthorityHost string = 'https://login.microsoftonline.com'

@description('Microsoft Graph endpoint (another for national clouds).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@secure()
@minLength(1)
@description('Client secret of that app registration (LIFECYCLE_GRAPH_CLIENT_SECRET); any placeholder when graphClientId is empty or a certificate is used.')
param graphClientSecret string

@description('Path, inside the app, of a PEM with the app registration\'s private key and certificate; empty when unused.')
param graphCertificateFile string = ''

@description('How an AD account is matched to its cloud user: upn or immutable_id (objectGUID).')
@allowed(['upn', 'immutable_id'])
param graphMatch string = 'upn'

@description('Hosts user photos may be downloaded from (https only); empty: photos only as base64 in the event.')
param photoAllowedHosts array = []

@description('Where generated passwords go: none, or graph_mail (to the manager, via Graph sendMail).')
@allowed(['none', 'graph_mail'])
param passwordDelivery string = 'none'

@description('Mailbox that sends the password mails (needs Mail.Send, scoped to it).')
param passwordMailSender string = ''

@description('Key of graphConnectionsJson naming the app that alone holds Mail.Send and sends the password mails (LIFECYCLE_PASSWORD_MAIL_CONNECTION); empty: the service\'s own Graph app sends them.')
param passwordMailConnection string = ''

@description('Where password mails go when the account has no manager with a mail address.')
param passwordMailFallback string = ''

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
    graphConnectionsJson: graphConnectionsJson
    fileRootsJson: fileRootsJson
    scriptsJson: scriptsJson
    webhookBasicPassword: webhookBasicPassword
    webhookHmacSecret: webhookHmacSecret
    webhookHmacSecretsJson: webhookHmacSecretsJson
    haloClientSecret: haloClientSecret
    graphClientSecret: graphClientSecret
    adminToken: adminToken
    consoleSessionKey: consoleSessionKey
    consoleEntraClientSecret: consoleEntraClientSecret
  }
}

var functionAppName = 'func-${prefix}-${resourceToken}'
// Registered as the web redirect URI of the console's app registration.
var consoleRedirectUri = 'https://${functionAppName}.azurewebsites.net/api/console/auth/callback'

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    actionGroupName: 'ag-${prefix}-${resourceToken}'
    actionGroupShortName: 'lifecycle'
    alertEmail: alertEmail
    appInsightsName: monitoring.outputs.appInsightsName
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    queueName: serviceBus.outputs.queueName
    tags: tags
  }
}

module onPremisesWorkerRoles 'modules/worker-roles.bicep' = if (!empty(onPremisesWorkerPrincipalId)) {
  name: 'onPremisesWorkerRoles'
  params: {
    principalId: onPremisesWorkerPrincipalId
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    queueName: serviceBus.outputs.queueName
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
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
  // The documented switch of one function: the host does not start the Service Bus trigger.
  'AzureWebJobs.work.Disabled': cloudWorker ? 'false' : 'true'
  LIFECYCLE_TABLE_ENDPOINT: storage.outputs.tableEndpoint
  LIFECYCLE_WEBHOOK_AUTH: webhookAuth
  LIFECYCLE_WEBHOOK_BASIC_USER: webhookBasicUser
  LIFECYCLE_WEBHOOK_BASIC_PASSWORD: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=webhook-basic-password)'
  LIFECYCLE_WEBHOOK_HMAC_SECRET: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=webhook-hmac-secret)'
  LIFECYCLE_WEBHOOK_HMAC_SECRETS: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=webhook-hmac-secrets)'
  LIFECYCLE_WEBHOOK_HMAC_HEADER: webhookHmacHeader
  LIFECYCLE_WEBHOOK_HMAC_ALGORITHM: webhookHmacAlgorithm
  LIFECYCLE_WEBHOOK_HMAC_ENCODING: webhookHmacEncoding
  LIFECYCLE_WEBHOOK_HMAC_PREFIX: webhookHmacPrefix
  LIFECYCLE_WEBHOOK_SIGNED_WINDOW_SECONDS: string(webhookSignedWindowSeconds)
  LIFECYCLE_WEBHOOK_MAX_FUTURE_SECONDS: string(webhookMaxFutureSeconds)
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
  LIFECYCLE_FILE_ROOTS: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=file-roots)'
  LIFECYCLE_SCRIPTS: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=scripts)'
  LIFECYCLE_SCRIPTS_DIR: scriptsDir
  LIFECYCLE_WORKER_CONCURRENCY: string(workerConcurrency)
  LIFECYCLE_RETRY_MAX_SECONDS: string(retryMaxSeconds)
  LIFECYCLE_RETRY_BASE_SECONDS: string(retryBaseSeconds)
  LIFECYCLE_RETRY_CAP_SECONDS: string(retryCapSeconds)
  LIFECYCLE_SETUP_RETRY_SECONDS: string(setupRetrySeconds)
  LIFECYCLE_RELEASE_SCHEDULE: releaseSchedule
  LIFECYCLE_RECONCILE_SCHEDULE: reconcileSchedule
  LIFECYCLE_RECONCILE_MODE: reconcileMode
  LIFECYCLE_HALO_POLL_SCHEDULE: haloPollSchedule
  LIFECYCLE_HALO_POLL_PAGE_SIZE: '50'
  LIFECYCLE_MAX_DELIVERIES: string(maxDeliveryCount)
  LIFECYCLE_DRY_RUN: dryRun ? 'true' : 'false'
  LIFECYCLE_GUARD_MAX_COUNT: string(guardMaxCount)
  LIFECYCLE_GUARD_MAX_PERCENT: string(guardMaxPercent)
  LIFECYCLE_GUARD_WINDOW_SECONDS: string(guardWindowSeconds)
  LIFECYCLE_GUARD_MAX_JOINERS: string(guardMaxJoiners)
  LIFECYCLE_GUARD_ACTIONS: string(guardActions)
  LIFECYCLE_ADMIN_TOKEN: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=admin-token)'
  // The console signs people in with Entra ID (two app roles, read and act); never the local one-time link.
  LIFECYCLE_CONSOLE_AUTH: 'entra'
  LIFECYCLE_CONSOLE_SESSION_KEY: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=console-session-key)'
  LIFECYCLE_CONSOLE_SESSION_HOURS: string(consoleSessionHours)
  LIFECYCLE_CONSOLE_ENTRA_AUTHORITY: '${environment().authentication.loginEndpoint}${tenant().tenantId}'
  LIFECYCLE_CONSOLE_ENTRA_CLIENT_ID: consoleEntraClientId
  LIFECYCLE_CONSOLE_ENTRA_CLIENT_SECRET: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=console-entra-client-secret)'
  LIFECYCLE_CONSOLE_REDIRECT_URI: consoleRedirectUri
  LIFECYCLE_HALO_API_URL: haloApiUrl
  LIFECYCLE_HALO_AUTH_URL: haloAuthUrl
  LIFECYCLE_HALO_TENANT: haloTenant
  LIFECYCLE_HALO_CLIENT_ID: haloClientId
  LIFECYCLE_HALO_CLIENT_SECRET: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=halo-client-secret)'
  LIFECYCLE_HALO_SCOPE: haloScope
  // An empty value means "not set" to the app (system CAs).
  LIFECYCLE_HALO_CA_FILE: haloCaFile
  LIFECYCLE_HALO_TIMEOUT_SECONDS: string(haloTimeoutSeconds)
  LIFECYCLE_HALO_RATE_LIMIT: string(haloRateLimit)
  LIFECYCLE_HALO_RATE_LIMIT_WINDOW_SECONDS: string(haloRateLimitWindowSeconds)
  LIFECYCLE_HALO_RATE_SHARE: haloRateShare
  LIFECYCLE_HALO_PAGE_SIZE: string(haloPageSize)
  LIFECYCLE_HALO_WRITEBACK_FIELDS: string(haloWritebackFields)
  LIFECYCLE_HALO_RECONCILE_FALLBACKS: string(haloReconcileFallbacks)
  LIFECYCLE_HALO_MISSING_USERS: haloMissingUsers
  LIFECYCLE_HALO_NOTE_OUTCOME: haloNoteOutcome
  LIFECYCLE_HALO_TICKET_STATUSES: string(haloTicketStatuses)
  LIFECYCLE_LOG_LEVEL: logLevel
  // Microsoft Graph: this tenant and cloud; the managed identity unless graphClientId is set.
  LIFECYCLE_GRAPH_TENANT_ID: graphTenantId
  LIFECYCLE_GRAPH_CLIENT_ID: graphClientId
  LIFECYCLE_GRAPH_CLIENT_SECRET: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=graph-client-secret)'
  // An empty value means "not set" to the app.
  LIFECYCLE_GRAPH_CERTIFICATE_FILE: graphCertificateFile
  // More tenants, one per customer of an MSP (docs/deployment.md, "Many tenants").
  LIFECYCLE_GRAPH_CONNECTIONS: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=graph-connections)'
  LIFECYCLE_GRAPH_AUTHORITY_HOST: graphAuthorityHost
  LIFECYCLE_GRAPH_BASE_URL: graphBaseUrl
  // Tests only (a stand-in's CA); Azure uses the system CAs.
  LIFECYCLE_GRAPH_CA_FILE: ''
  LIFECYCLE_GRAPH_TIMEOUT_SECONDS: '30'
  LIFECYCLE_GRAPH_MAX_RETRIES: '3'
  LIFECYCLE_GRAPH_MATCH: graphMatch
  LIFECYCLE_GRAPH_SYNC_WAIT_SECONDS: '14400'
  LIFECYCLE_GRAPH_POLL_SECONDS: '120'
  LIFECYCLE_PHOTO_ALLOWED_HOSTS: string(photoAllowedHosts)
  LIFECYCLE_PHOTO_MAX_BYTES: '10485760'
  LIFECYCLE_PASSWORD_DELIVERY: passwordDelivery
  LIFECYCLE_PASSWORD_MAIL_SENDER: passwordMailSender
  LIFECYCLE_PASSWORD_MAIL_CONNECTION: passwordMailConnection
  LIFECYCLE_PASSWORD_MAIL_FALLBACK: passwordMailFallback
  LIFECYCLE_PASSWORD_MAIL_SUBJECT: 'Sign-in details for {name}'
  LIFECYCLE_PASSWORD_MAIL_BODY: 'Hello {manager},\n\nthe account of {name} is ready.\nUser name: {upn}\nInitial password: {password}\n\nPlease hand it over in person; it must be changed at the first sign-in.'
  LIFECYCLE_TAP_MAIL_SUBJECT: 'Sign-in details for {name}'
  LIFECYCLE_TAP_MAIL_BODY: 'Hello {manager},\n\nthe account of {name} is ready.\nUser name: {upn}\nTemporary Access Pass: {pass}\nValid from {start} until {end} (UTC).\n\nPlease hand it over in person; with it {name} signs in and sets up passwordless sign-in (Microsoft Authenticator, a passkey or Windows Hello).'
}, empty(adCaFile) ? {} : {
  // Only when given: an empty value would be read as the path "." rather than "no CA file".
  LIFECYCLE_AD_CA_FILE: adCaFile
}, empty(adTlsServerName) ? {} : {
  LIFECYCLE_AD_TLS_SERVER_NAME: adTlsServerName
})

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: functionAppName
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
output consoleRedirectUri string = consoleRedirectUri
output storageAccountName string = storage.outputs.name
// Grant the Graph application permissions to this service principal (docs/deployment.md).
output identityPrincipalId string = identity.outputs.principalId
output identityClientId string = identity.outputs.clientId
