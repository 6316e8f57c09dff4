export {
  Appliance,
  DEFAULT_REGION_NAME,
  HTTP_PORT_DEFAULT,
  NBD_PORT_DEFAULT,
  type ApplianceAuthOptions,
  type ApplianceOptions,
  type ApplianceStats,
  type Endpoint,
  type StopReport,
} from './appliance.js';
export { nodeFileLayer, type FileLayer, type LayerFile } from './file-layer.js';
export { type LoadReport } from './file-backing.js';
export { Region, type RegionInfo, type RegionStats } from './region.js';
export {
  RegionRegistry,
  type CreateRegionOptions,
  type PendingRegion,
  type RegionState,
  type UnsavedRegion,
} from './registry.js';
export { exposureWarnings, isLoopback, nbdExposureWarning } from './exposure.js';
export { adminRequest, type AdminBase, type AdminTarget } from './admin-client.js';
export { type Identity, type ReadAccess } from './auth.js';
export { generateToken, stateTokenFile } from './auth-token.js';
