/**
 * A region: one address space of the appliance's frame pool, served as an NBD export and
 * managed through the admin API. It is usable the moment it exists (nothing is allocated
 * until written; unwritten ranges read as zeros and report as holes), which is the seed's
 * "access before initialisation of all of the region".
 *
 * The NBD server validates every request before calling in, so the data methods only count
 * and forward. Counters are plain numbers: a region is one object, its pages are not.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { AddressSpace } from '../memory/index.js';
import { GATE_CLOSED, GATE_MOVED, GATE_OPEN, MigrationGate } from '../migrate/gate.js';
import type { NbdExport } from '../nbd/index.js';
import type { FileBacking, LoadReport } from './file-backing.js';
import type { StoredDescriptor } from './region-descriptor.js';

/** At most this many extents per BLOCK_STATUS reply (clients ask again for the rest). */
export const EXTENTS_PER_REPLY_MAX = 4096;

/**
 * What a region still accepts while it migrates: everything; reads, block status and flushes
 * but no mutation (the blackout); nothing (moved: its memory is freed). One mechanism decides:
 * the write gate the migration engine puts on the region's space (src/migrate/gate.ts), whose
 * state `Region.gate` reads. A refused request throws MF_MIGRATING, which NBD answers with
 * ESHUTDOWN.
 */
export { GATE_MOVED, GATE_OPEN };
export const GATE_BLACKOUT = GATE_CLOSED;

/** Where a migrated region lives now. */
export interface MovedTo {
  /** The target appliance's admin URL. */
  appliance: string;
  /** The region's name there. */
  region: string;
  /** The target appliance's NBD endpoint. */
  nbd: { host: string; port: number };
}

export interface RegionInfo {
  name: string;
  size: number;
  readOnly: boolean;
  tenant: string;
  /** The backing file's path, for file-backed regions. */
  file: string | null;
  /** The region this one was cloned from, if any. */
  clonedFrom: string | null;
  createdAt: string;
  /** Always `ready` for a Region; file-backed regions found at start may also be `loading`, `failed` or `corrupt` (see registry.ts). */
  state: 'ready';
  /** Why a region failed to load; null for a Region. */
  error: null;
  /** What loading it from its files cost (file-backed regions loaded at start), else null. */
  load: LoadReport | null;
  /** NBD connections attached now (also in `stats`). */
  connections: number;
  /** The fabric region descriptor it carries; absent when none was given. */
  descriptor?: StoredDescriptor;
}

export interface RegionStats {
  reads: number;
  writes: number;
  trims: number;
  zeroes: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Bytes of pages that hold data (private or shared). */
  residentBytes: number;
  /** Bytes of pages whose frame is shared with another page (clones, merged pages). */
  sharedBytes: number;
  /** Bytes of pages mapped to the zero frame. */
  zeroBytes: number;
  connections: number;
}

export class Region implements NbdExport {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly tenant: string;
  readonly blockSize: number;
  readonly description: string;
  readonly space: AddressSpace;
  readonly backing: FileBacking | undefined;
  readonly clonedFrom: string | null;
  readonly createdAt = new Date();
  connections = 0;
  /** A migration of this region is under way (it cannot be deleted or migrated again). */
  migrating = false;
  /**
   * The fabric region's descriptor this region (a shard) carries, if one was given; changed
   * only through RegionRegistry.putDescriptor (generation check, persistence).
   */
  descriptor: StoredDescriptor | undefined;

  private reads = 0;
  private writes = 0;
  private trims = 0;
  private zeroes = 0;
  private flushes = 0;
  private bytesRead = 0;
  private bytesWritten = 0;

  constructor(options: {
    name: string;
    space: AddressSpace;
    readOnly: boolean;
    tenant: string;
    backing?: FileBacking | undefined;
    clonedFrom?: string | null;
    descriptor?: StoredDescriptor | undefined;
  }) {
    this.name = options.name;
    this.space = options.space;
    this.size = options.space.size;
    this.readOnly = options.readOnly;
    this.tenant = options.tenant;
    this.backing = options.backing;
    this.clonedFrom = options.clonedFrom ?? null;
    this.descriptor = options.descriptor;
    this.blockSize = options.space.pageSize;
    this.description = `memfabric region ${options.name} (tenant ${options.tenant})`;
  }

  /**
   * GATE_OPEN, GATE_BLACKOUT or GATE_MOVED: the state of the migration's write gate on the
   * space (GATE_OPEN when none). The gate refuses writes to the space itself too; checking it
   * here first only words the refusal for NBD clients (resolve the region again) and keeps
   * reads of a moved region out of its freed memory.
   */
  get gate(): number {
    const gate = this.space.writeGate;
    return gate instanceof MigrationGate ? gate.state : GATE_OPEN;
  }

  read(offset: number, dst: Uint8Array): void {
    this.readInto(offset, dst.length, dst, 0);
  }

  readInto(offset: number, length: number, dst: Uint8Array, dstOffset: number): void {
    if (this.gate === GATE_MOVED) throw this.gateError();
    this.space.readInto(offset, length, dst, dstOffset);
    this.reads++;
    this.bytesRead += length;
  }

  write(offset: number, src: Uint8Array): void {
    this.beginWrite(offset, src.length);
    this.writePiece(offset, src);
  }

  /** Refuses a write now, before any of it is written, when memory cannot hold it. */
  beginWrite(offset: number, length: number): void {
    this.assertWritable();
    this.space.reserveWrite(offset, length);
    this.writes++;
  }

  writePiece(offset: number, src: Uint8Array): void {
    this.assertWritable();
    this.space.write(offset, src);
    this.bytesWritten += src.length;
  }

  trim(offset: number, length: number): void {
    this.assertWritable();
    this.space.trim(offset, length);
    this.trims++;
  }

  writeZeroes(offset: number, length: number, mayPunchHole: boolean): void {
    this.assertWritable();
    this.space.writeZeroes(offset, length, mayPunchHole);
    this.zeroes++;
    this.bytesWritten += length;
  }

  /** Makes completed writes durable: saves to the backing file, if any. */
  async flush(): Promise<void> {
    if (this.gate === GATE_MOVED) throw this.gateError();
    this.flushes++;
    if (this.backing) await this.backing.save(this.space);
  }

  blockStatus(offset: number, length: number, emit: (length: number, flags: number) => void): number {
    if (this.gate === GATE_MOVED) throw this.gateError();
    return this.space.extents(offset, length, emit, EXTENTS_PER_REPLY_MAX);
  }

  info(): RegionInfo {
    return {
      name: this.name,
      size: this.size,
      readOnly: this.readOnly,
      tenant: this.tenant,
      file: this.backing?.imagePath ?? null,
      clonedFrom: this.clonedFrom,
      createdAt: this.createdAt.toISOString(),
      state: 'ready',
      error: null,
      load: this.backing?.loadReport ?? null,
      connections: this.connections,
      ...(this.descriptor !== undefined ? { descriptor: this.descriptor } : {}),
    };
  }

  stats(): RegionStats {
    const space = this.space.stats();
    const pageSize = this.space.pageSize;
    return {
      reads: this.reads,
      writes: this.writes,
      trims: this.trims,
      zeroes: this.zeroes,
      flushes: this.flushes,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      residentBytes: space.dataPages * pageSize,
      sharedBytes: space.sharedPages * pageSize,
      zeroBytes: space.zeroPages * pageSize,
      connections: this.connections,
    };
  }

  private assertWritable(): void {
    if (this.gate !== GATE_OPEN) throw this.gateError();
    if (this.readOnly) {
      throw new MemfabricError(
        ErrorCodes.READ_ONLY,
        `region ${this.name} is read-only; clone it to get a writable copy`,
      );
    }
  }

  private gateError(): MemfabricError {
    return new MemfabricError(
      ErrorCodes.MIGRATING,
      this.gate === GATE_MOVED
        ? `region ${this.name} has moved to another appliance; resolve it again and reconnect there`
        : `region ${this.name} is in its migration blackout; nothing was written: resolve it again and retry`,
    );
  }
}
