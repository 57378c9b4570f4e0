// The function app on Flex Consumption (Linux), running as the user-assigned identity.
// Its app settings are built in one place, the `appSettings` variable of main.bicep, and passed in.

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Blob endpoint of the storage account that holds the deployment package.')
param blobEndpoint string

@description('Container for the deployment package.')
param deploymentContainerName string

@description('Python version of the worker.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Subnet (delegated to Microsoft.App/environments) for outbound traffic; empty for none.')
param subnetId string

@description('Every app setting, name to value (built in main.bicep).')
param appSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy of Flex Consumption is not offered in every region; the app is stateless and its work waits in Service Bus.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Halo (a SaaS) calls the webhook over the internet; every request needs the function key and passes the app's own authentication (HMAC signature or Basic, compared in constant time).
  // checkov:skip=CKV_AZURE_17: Halo webhooks cannot present client certificates; requests are authenticated by signature or Basic credentials in the app.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales to zero by design and has no fixed instance count.
  // checkov:skip=CKV_AZURE_213: Flex Consumption does not support the App Service health check; GET /api/health serves readiness probes.
  // checkov:skip=CKV_AZURE_18: the HTTP version is left to the platform: Flex Consumption documents no http20Enabled setting, and Halo webhooks use HTTP/1.1.
  // checkov:skip=CKV_AZURE_67: as CKV_AZURE_18, the HTTP version is left to the Flex Consumption platform.
  // checkov:skip=CKV_AZURE_78: Flex Consumption has no FTP endpoint; deployments go through the blob container with Entra ID.
  name: name
  location: location
  // azd finds the app to deploy to by this tag (azure.yaml service `lifecycle`).
  tags: union(tags, {
    'azd-service-name': 'lifecycle'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    // Key Vault references in app settings are resolved with the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// Deployments authenticate with Entra ID (az login / func), never with basic publishing credentials.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
