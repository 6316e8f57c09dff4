export {
  Appliance,
  DEFAULT_REGION_NAME,
  HTTP_PORT_DEFAULT,
  NBD_PORT_DEFAULT,
  type ApplianceAuthOptions,
  type ApplianceOptions,
  type ApplianceStats,
  type Endpoint,
} from './appliance.js';
export { Region, type RegionInfo, type RegionStats } from './region.js';
export { RegionRegistry, type CreateRegionOptions } from './registry.js';
export { adminRequest, type AdminBase, type AdminTarget } from './admin-client.js';
export { exposureWarnings, isLoopback, type Identity, type ReadAccess } from './auth.js';
export { generateToken, stateTokenFile } from './auth-token.js';
