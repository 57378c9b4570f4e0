// The Service Bus namespace and the work queue between the ingress (HTTP) function and the worker
// (Service Bus-triggered) function. Entra ID only: local (SAS key) authentication is disabled, so
// the identity's Data Sender and Data Receiver roles on the queue are the only way in.

@description('Name of the Service Bus namespace.')
param namespaceName string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Standard (default) or Premium. Basic has no sessions or duplicate detection; Premium adds network isolation.')
@allowed([
  'Standard'
  'Premium'
])
param sku string

@description('Messaging units, Premium only.')
@allowed([
  1
  2
  4
  8
  16
])
param premiumCapacity int

@description('Name of the work queue (LIFECYCLE_SERVICEBUS_QUEUE).')
param queueName string

@description('Duplicate detection window, ISO 8601 (PT20S to P7D). A message whose MessageId (the work id) was seen within it is dropped.')
param duplicateDetectionWindow string

@description('Deliveries before a message is dead-lettered (LIFECYCLE_MAX_DELIVERIES is set to the same value).')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int

@description('Peek-lock duration, ISO 8601 (at most PT5M). The Functions host renews the lock while a message is processed.')
param lockDuration string

@description('Time to live of a message, ISO 8601. An expired message is dead-lettered, never dropped.')
param messageTimeToLive string

@description('Subnet the function app is integrated with. Premium only: when set, the namespace accepts traffic only from it (service endpoint).')
param allowedSubnetId string

var restrictToSubnet = sku == 'Premium' && !empty(allowedSubnetId)

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
    capacity: sku == 'Premium' ? premiumCapacity : null
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: queueName
  properties: {
    // One Halo user's events are processed in order: SessionId = the Halo user id.
    requiresSession: true
    // MessageId = the deterministic work id, so a re-sent webhook is enqueued once.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    defaultMessageTimeToLive: messageTimeToLive
    deadLetteringOnMessageExpiration: true
    enableBatchedOperations: true
    enablePartitioning: false
  }
}

resource networkRules 'Microsoft.ServiceBus/namespaces/networkRuleSets@2024-01-01' = if (restrictToSubnet) {
  parent: namespace
  name: 'default'
  properties: {
    defaultAction: 'Deny'
    publicNetworkAccess: 'Enabled'
    trustedServiceAccessEnabled: false
    virtualNetworkRules: [
      {
        subnet: {
          id: allowedSubnetId
        }
        ignoreMissingVnetServiceEndpoint: false
      }
    ]
    ipRules: []
  }
}

output namespaceName string = namespace.name
output queueName string = queue.name
// The host name only (no scheme, no port), as ServiceBusConnection__fullyQualifiedNamespace wants it.
output fullyQualifiedNamespace string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')
