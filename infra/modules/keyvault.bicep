// Key Vault in RBAC mode with soft delete and purge protection, holding every secret the app reads.
// The function app reads them through Key Vault references in its app settings
// (modules/functionapp.bicep), resolved by the platform with the user-assigned identity, which has
// Key Vault Secrets User on this vault and nothing more.
//
// Secret values come in only as @secure() parameters without defaults: they never appear in the
// template, in main.parameters.json, or in the deployment history. To add a secret: one parameter
// here, one secret resource here, one Key Vault reference in modules/functionapp.bicep.
//
// Flex Consumption resolves Key Vault references over the vault's public endpoint, so the vault
// cannot be network-restricted (see docs/deployment.md). Access is by Entra ID and RBAC only.

@description('Name of the vault (3-24 characters, globally unique; a deleted vault keeps its name for the retention period).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Log Analytics workspace that receives the vault\'s audit log (every secret read).')
param workspaceId string

@description('Days a deleted vault or secret can be recovered (7-90). Purge protection forbids shortening it.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int

@description('Days after a deployment when the secrets it wrote are due for rotation (their expiry date; Key Vault keeps serving an expired secret, the date is a reminder).')
@minValue(1)
@maxValue(730)
param secretRotationDays int

@description('Time of this deployment, to compute the expiry dates. Leave the default.')
param deploymentTime string = utcNow()

@secure()
@minLength(12)
@description('Password of the AD bind account (LIFECYCLE_AD_PASSWORD).')
param adBindPassword string

@secure()
@minLength(2)
@description('JSON of the additional named AD connections, passwords included (LIFECYCLE_AD_CONNECTIONS); {} when there are none.')
param adConnectionsJson string

@secure()
@minLength(2)
@description('JSON of more Microsoft 365 tenants, credentials included (LIFECYCLE_GRAPH_CONNECTIONS); {} when there are none.')
param graphConnectionsJson string

@secure()
@minLength(2)
@description('JSON of the home-folder roots, share passwords included (LIFECYCLE_FILE_ROOTS); {} when there are none.')
param fileRootsJson string

@secure()
@minLength(2)
@description('JSON of the custom-script allow-list, signing secrets included (LIFECYCLE_SCRIPTS); {} when there are none.')
param scriptsJson string

@secure()
@minLength(16)
@description('Password Halo sends with Basic authentication (LIFECYCLE_WEBHOOK_BASIC_PASSWORD). When Basic is not used, pass a long random value.')
param webhookBasicPassword string

@secure()
@minLength(32)
@description('HMAC key of the webhook signature (LIFECYCLE_WEBHOOK_HMAC_SECRET). When signatures are not used, pass a long random value.')
param webhookHmacSecret string

@secure()
@description('JSON of one webhook signing secret per event kind (LIFECYCLE_WEBHOOK_HMAC_SECRETS); {} when not used.')
param webhookHmacSecretsJson string

@secure()
@minLength(32)
@description('Bearer token of the operator routes /api/manage/held (LIFECYCLE_ADMIN_TOKEN).')
param adminToken string

@secure()
@minLength(1)
@description('Client secret of the Halo API application (LIFECYCLE_HALO_CLIENT_SECRET); a placeholder when the Halo API is not used.')
param haloClientSecret string

@secure()
@minLength(32)
@description('Key that signs the console\'s session cookies (LIFECYCLE_CONSOLE_SESSION_KEY).')
param consoleSessionKey string

@secure()
@minLength(1)
@description('Client secret of the console\'s Entra app registration (LIFECYCLE_CONSOLE_ENTRA_CLIENT_SECRET).')
param consoleEntraClientSecret string

@secure()
@minLength(1)
@description('Client secret of the Graph app registration (LIFECYCLE_GRAPH_CLIENT_SECRET); a placeholder with the managed identity.')
param graphClientSecret string

var secretExpiry = dateTimeToEpoch(dateTimeAdd(deploymentTime, 'P${secretRotationDays}D'))

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Flex Consumption resolves Key Vault references over the public endpoint; a firewall on the vault breaks them. Access is by Entra ID with RBAC only (no access policies), and the app identity can only read secrets.
  // checkov:skip=CKV_AZURE_189: as CKV_AZURE_109: public network access must stay enabled for Key Vault references on Flex Consumption.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource adBindPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'ad-bind-password'
  properties: {
    value: adBindPassword
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource adConnectionsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'ad-connections'
  properties: {
    value: adConnectionsJson
    contentType: 'application/json'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource graphConnectionsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'graph-connections'
  properties: {
    value: graphConnectionsJson
    contentType: 'application/json'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource fileRootsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'file-roots'
  properties: {
    value: fileRootsJson
    contentType: 'application/json'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource scriptsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'scripts'
  properties: {
    value: scriptsJson
    contentType: 'application/json'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource webhookBasicPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-basic-password'
  properties: {
    value: webhookBasicPassword
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource webhookHmacSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-hmac-secret'
  properties: {
    value: webhookHmacSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource webhookHmacSecretsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-hmac-secrets'
  properties: {
    value: webhookHmacSecretsJson
    contentType: 'application/json'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource adminTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'admin-token'
  properties: {
    value: adminToken
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource consoleSessionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'console-session-key'
  properties: {
    value: consoleSessionKey
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource consoleEntraClientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'console-entra-client-secret'
  properties: {
    value: consoleEntraClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource haloClientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'halo-client-secret'
  properties: {
    value: haloClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource graphClientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'graph-client-secret'
  properties: {
    value: graphClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

// Who read which secret, and when.
resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
