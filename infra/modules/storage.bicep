// One storage account for the Functions host (AzureWebJobsStorage: leases, timer schedule state),
// for the Flex Consumption deployment package, and for the app's tables (journal, audit).
// No keys: shared key access is off, so every client (host, deployment, app) authenticates with
// Entra ID, and the identity's roles (modules/roles.bicep) decide what it may do.

@description('Name of the storage account (3-24 lower-case letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Replication (Standard_ZRS where the region has zones; Standard_LRS is the cheapest).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Blob container that holds the deployment package of the Flex Consumption app.')
param deploymentContainerName string

@description('Tables the app keeps its journal and audit trail in.')
param tableNames array

@description('Subnet the function app is integrated with. When set, the account accepts traffic only from it (service endpoint); empty leaves the public endpoint open (Entra ID authentication still required).')
param allowedSubnetId string

var restrictToSubnet = !empty(allowedSubnetId)

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_59: without VNet integration the Flex Consumption host reaches the account over its public endpoint; shared key is off, so every request needs an Entra token and a role. With VNet integration the account denies all but the function subnet.
  // checkov:skip=CKV_AZURE_35: as CKV_AZURE_59: the default action is Deny when VNet integration is on (networkAcls below), Allow without it because the Flex Consumption host has no fixed addresses.
  // checkov:skip=CKV_AZURE_206: replication is a parameter (skuName, main.bicep storageSku); LRS is the default because ZRS is not offered in every region; choose ZRS or GZRS where the audit table must survive a zone or region outage.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: restrictToSubnet ? {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [
        {
          id: allowedSubnetId
          action: 'Allow'
        }
      ]
    } : {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
