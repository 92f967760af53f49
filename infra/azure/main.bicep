// docbus on Azure Service Bus: one namespace with the topics, subscriptions and routing rules of
// infra/topology.toml (the single source of truth). Generate the parameters, never write them:
//
//   docbus topology bicep-params -o params.json
//   az deployment group create -g <resource-group> -f infra/azure/main.bicep -p @params.json
//
// Every subscription gets the two correlation rules the topology generates: "broadcast"
// (docbus-route = '*') and "addressed" (docbus-route = '<subscription>'). Service Bus creates a
// catch-all '$Default' rule with each new subscription; when rules are added through Resource
// Manager it is removed, and infra/azure/README.md shows how to check that it is gone.

targetScope = 'resourceGroup'

@description('Service Bus namespace name, globally unique: 6-50 letters, digits and hyphens.')
@minLength(6)
@maxLength(50)
param namespaceName string = 'docbus-${uniqueString(resourceGroup().id)}'

@description('Azure region of the namespace.')
param location string = resourceGroup().location

@description('Standard (shared capacity, 256 KB messages) or Premium (dedicated capacity, messages up to 100 MB).')
@allowed([
  'Standard'
  'Premium'
])
param skuName string = 'Standard'

@description('Premium only: messaging units.')
@allowed([
  1
  2
  4
  8
  16
])
param premiumMessagingUnits int = 1

@description('True turns off SAS keys and connection strings: Entra ID (DefaultAzureCredential) only.')
param disableLocalAuth bool = false

@description('Topics with their subscriptions and rules, as `docbus topology bicep-params` writes them.')
param topics array

@description('Object ids of Entra ID principals (worker and KEDA managed identities) made Azure Service Bus Data Owner of the namespace.')
param dataOwnerPrincipalIds array = []

// Built-in role "Azure Service Bus Data Owner".
var serviceBusDataOwnerRoleId = '090c5cfd-751d-490a-894a-3ce6f1109419'

var standardSku = {
  name: 'Standard'
  tier: 'Standard'
}

var premiumSku = {
  name: 'Premium'
  tier: 'Premium'
  capacity: premiumMessagingUnits
}

// Resource loops cannot nest, so subscriptions and rules are flattened, each entry keeping the
// index of its parent in the loop above it.
var subscriptions = flatten(map(range(0, length(topics)), t => map(topics[t].subscriptions, s => {
  topicIndex: t
  spec: s
})))

var rules = flatten(map(range(0, length(subscriptions)), i => map(subscriptions[i].spec.rules, r => {
  subscriptionIndex: i
  spec: r
})))

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  sku: skuName == 'Premium' ? premiumSku : standardSku
  properties: {
    minimumTlsVersion: '1.2'
    disableLocalAuth: disableLocalAuth
  }
}

resource topicResources 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = [for topic in topics: {
  parent: namespace
  name: topic.name
  properties: {
    requiresDuplicateDetection: topic.requiresDuplicateDetection
    duplicateDetectionHistoryTimeWindow: topic.duplicateDetectionHistoryTimeWindow
  }
}]

resource subscriptionResources 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [for sub in subscriptions: {
  parent: topicResources[sub.topicIndex]
  name: sub.spec.name
  properties: {
    maxDeliveryCount: sub.spec.maxDeliveryCount
    lockDuration: sub.spec.lockDuration
    defaultMessageTimeToLive: sub.spec.defaultMessageTimeToLive
    deadLetteringOnMessageExpiration: sub.spec.deadLetteringOnMessageExpiration
    deadLetteringOnFilterEvaluationExceptions: true
    requiresSession: sub.spec.requiresSession
  }
}]

// The generated rules are correlation filters on application properties, in the shape of
// Microsoft's emulator Config.json (Name, Properties.CorrelationFilter.Properties).
resource ruleResources 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [for rule in rules: {
  parent: subscriptionResources[rule.subscriptionIndex]
  name: rule.spec.Name
  properties: {
    filterType: 'CorrelationFilter'
    correlationFilter: {
      properties: rule.spec.Properties.CorrelationFilter.Properties
    }
  }
}]

resource dataOwners 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in dataOwnerPrincipalIds: {
  name: guid(namespace.id, principalId, serviceBusDataOwnerRoleId)
  scope: namespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

@description('The namespace name, for `az servicebus` commands and KEDA.')
output namespaceName string = namespace.name

@description('For DOCBUS_SERVICEBUS__NAMESPACE (Entra ID authentication).')
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
