// Alerts that wake a person when work could not be done: an action group that e-mails the operators, and
// two metric alerts on it.
//
// - The app's own metric `lifecycle.items.dead_lettered` (OpenTelemetry, exported to Application Insights as
//   a custom metric, namespace azure.applicationinsights): every item the worker parks in the `deadletters`
//   table or dead-letters, which Service Bus does not count (the trigger cannot dead-letter with a reason, so
//   the worker parks permanent failures; README design notes).
// - The queue's `DeadletteredMessages` (Service Bus platform metric, filtered to the work queue by its
//   EntityName dimension): crash loops past maxDeliveryCount and expired messages, which the app never sees.
//
// Both fire while the count is above zero and resolve by themselves (autoMitigate) once the operator has
// replayed or removed the work (docs/operations.md, the replay runbook).

@description('Name of the action group.')
param actionGroupName string

@description('Short name of the action group (up to 12 characters; shown in the e-mail).')
@maxLength(12)
param actionGroupShortName string

@description('Where the alerts are e-mailed (an operators\' distribution list).')
param alertEmail string

@description('Name of the Application Insights component the app exports its metrics to.')
param appInsightsName string

@description('Name of the Service Bus namespace.')
param serviceBusNamespaceName string

@description('Name of the work queue.')
param queueName string

@description('Tags for every resource.')
param tags object

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource operators 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: actionGroupShortName
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource parkedWork 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${actionGroupName}-parked-work'
  location: 'global'
  tags: tags
  properties: {
    description: 'Work items were parked or dead-lettered with a reason (lifecycle dlq list; docs/operations.md).'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricNamespace: 'azure.applicationinsights'
          metricName: 'lifecycle.items.dead_lettered'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
          // The metric exists only once the app has exported it: do not fail the deployment before.
          skipMetricValidation: true
        }
      ]
    }
    actions: [
      {
        actionGroupId: operators.id
      }
    ]
  }
}

resource deadLetterQueue 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${actionGroupName}-dead-letter-queue'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages wait in the work queue\'s dead-letter sub-queue (crash loops, expired): lifecycle dlq list.'
    severity: 1
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-letter-count'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: operators.id
      }
    ]
  }
}

output actionGroupId string = operators.id
