/**
 * The fleet's catalog on etcd: the connection and key layout, the region catalog, appliance
 * registration and discovery, leased sub-allocation, and the fleet controller (docs/fleet.md).
 */
export {
  EtcdConnection,
  EtcdKeys,
  ETCD_PREFIX,
  ETCD_CALL_MS_DEFAULT,
  ETCD_RETRY_MS_DEFAULT,
  catalogUnavailable,
  type EtcdOptions,
} from './etcd.js';
export { EtcdCatalog, type EtcdCatalogOptions } from './etcd-catalog.js';
export {
  ApplianceRegistration,
  REGISTRATION_TTL_SECONDS_DEFAULT,
  applianceId,
  type ApplianceRecord,
  type RegisteredAppliance,
  type RegistrationOptions,
  type RegistrationState,
} from './registration.js';
export { ApplianceDiscovery, type DiscoveryEvent, type DiscoveryOptions } from './etcd-discovery.js';
export {
  LeasedSubAllocator,
  RUN_CHUNKS_MAX,
  CHUNK_LEASE_TTL_SECONDS_DEFAULT,
  type LeasedSubAllocatorOptions,
} from './leased-chunks.js';
export {
  FleetController,
  CONTROLLER_STATUS_KEY,
  type ControllerStatus,
  type FleetControllerOptions,
  type RebuildInProgress,
} from './controller.js';
export {
  RebuildRequests,
  REBUILD_REQUESTS_PREFIX,
  rebuildRequestKey,
  type RebuildRequest,
} from './rebuild-requests.js';
export { planRebalance, type ShardMove } from './rebalance.js';
