// Optional VNet for outbound traffic of the function app: a subnet delegated to
// Microsoft.App/environments (what Flex Consumption requires), with service endpoints so the
// storage account (and a Premium Service Bus namespace) can accept traffic from this subnet only.
// Connect it to the domain controllers yourself: peer it with a hub that has the VPN or
// ExpressRoute gateway (allow gateway transit / use remote gateways), or add a gateway subnet.
// The DNS servers must resolve the AD domain (typically the DCs themselves or on-prem resolvers).

@description('Name of the virtual network.')
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Address space of the VNet; must not overlap the on-prem ranges it is routed to.')
param addressPrefix string

@description('Prefix of the function app subnet (/27 or larger; Flex Consumption takes one address per instance).')
param functionSubnetPrefix string

@description('DNS servers for the VNet (at least two for redundancy, e.g. the domain controllers). Empty uses Azure DNS, which cannot resolve on-prem names.')
param dnsServers array

var functionSubnetName = 'snet-functions'

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: 'nsg-${name}-functions'
  location: location
  tags: tags
  properties: {
    // Nothing comes in through the subnet: the app's inbound traffic arrives at its public
    // endpoint, not through the VNet. Outbound uses the default rules.
    securityRules: [
      {
        name: 'deny-all-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  // checkov:skip=CKV_AZURE_183: the DNS servers are a parameter: on-prem resolvers or the DCs, which are reached through the VPN or ExpressRoute, not addresses inside this VNet.
  // checkov:skip=CKV_AZURE_182: the DNS servers are a parameter; docs/deployment.md asks for at least two.
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    dhcpOptions: {
      dnsServers: dnsServers
    }
    subnets: [
      {
        name: functionSubnetName
        properties: {
          addressPrefix: functionSubnetPrefix
          networkSecurityGroup: {
            id: nsg.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
            {
              service: 'Microsoft.ServiceBus'
            }
          ]
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

output vnetId string = vnet.id
output functionSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, functionSubnetName)
