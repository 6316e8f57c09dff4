export {
  Appliance,
  DEFAULT_REGION_NAME,
  HTTP_PORT_DEFAULT,
  NBD_PORT_DEFAULT,
  type ApplianceOptions,
  type ApplianceStats,
  type Endpoint,
} from './appliance.js';
export { Region, type RegionInfo, type RegionStats } from './region.js';
export { RegionRegistry, type CreateRegionOptions } from './registry.js';
export { isLoopbackHost, nbdExposureWarning } from './exposure.js';
