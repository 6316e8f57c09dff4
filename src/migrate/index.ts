/** Live migration of an address space or a heap between processes (issue 10): see docs/migration.md. */
export {
  Migration,
  migrateSpace,
  migrateHeap,
  type MigrateSpaceOptions,
  type SpaceMigrationReport,
  type SpaceMigrationStatus,
} from './migrate-space.js';
export {
  MigrationListener,
  IncomingMigration,
  HELLO_TIMEOUT_MS,
  type ListenOptions,
  type ReceiveSpaceOptions,
  type IncomingProgress,
} from './listener.js';
export {
  PreCopyEngine,
  decideRound,
  expectedDowntimeMs,
  MAX_DOWNTIME_DEFAULT_MS,
  MAX_ROUNDS_DEFAULT,
  BLACKOUT_TIMEOUT_DEFAULT_MS,
  type PageSink,
  type SinkMeasure,
  type Handover,
  type PreCopyOptions,
  type MigrationPhase,
  type MigrationProgress,
  type MigrationReport,
  type RoundReport,
  type StopReason,
} from './engine.js';
export { type ThrottleReport } from './throttle.js';
export { type MigrationMode, type MigrationKind } from './protocol.js';
export {
  runPostCopySource,
  type PostCopySourceOptions,
  type PostCopySourceProgress,
  type PostCopySourceReport,
} from './postcopy-source.js';
export {
  receivePostCopy,
  type PostCopyHello,
  type PostCopyDestinationOptions,
  type PostCopyDestination,
  type PostCopyProgress,
  type PostCopyReport,
} from './postcopy-destination.js';
export {
  replicate,
  Replica,
  type ReplicateOptions,
  type ReplicaStats,
  type ReplicaState,
} from './replica.js';
export {
  StandbyListener,
  Standby,
  type StandbyOptions,
  type StandbyListenOptions,
  type StandbyState,
  type StandbyStats,
  type Activation,
} from './standby.js';
export { EPOCH_MS_DEFAULT } from './standby-protocol.js';
export { FAULT_TIMEOUT_DEFAULT_MS } from './postcopy-protocol.js';
export { MessageConnection } from './connection.js';
