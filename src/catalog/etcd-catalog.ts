/**
 * The fleet's catalog of fabric regions in etcd: one key per (tenant, name) holding the
 * region's descriptor as JSON (key layout in etcd.ts).
 *
 * Every change is a transaction that compares a revision, so two clients never make
 * conflicting changes:
 *   create   put if the key's create revision is 0 (the name is free), else MF_ALREADY_EXISTS;
 *   update   read the stored descriptor, check its generation is next.generation - 1 and its
 *            id is next.id, then put if the key's mod revision is still the one read; a
 *            failed compare reads again, and a moved generation is MF_STALE_GENERATION;
 *   remove   delete if the stored id is the descriptor's and the mod revision is the one read
 *            (a region made later under the same name is never removed by a stale caller).
 *
 * A write whose answer was lost (a leader change, a deadline) may have been applied: etcd.ts
 * tries it again, and the compare then fails because of our own write. So before reporting a
 * conflict, each method checks whether what is stored is exactly what it wrote (same id and
 * checksum: region ids are random, so nobody else writes that) and then reports success.
 *
 * A stored value that does not parse (parseDescriptor) is skipped by get and list and logged
 * at warn; its name stays taken until an operator removes the key.
 */
import type { IKeyValue } from 'etcd3';
import type { Logger } from 'pino';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { Catalog, CatalogEntry, RegionRef } from './catalog.js';
import { parseDescriptor, type RegionDescriptor } from './descriptor.js';
import { EtcdConnection, EtcdKeys, type EtcdOptions } from './etcd.js';

/** Compare-and-swap rounds an update or remove tries before giving up (others keep winning). */
const CAS_ROUNDS_MAX = 32;

export interface EtcdCatalogOptions extends EtcdOptions {
  /** Where corrupt entries are reported (warn). Default: process warnings. */
  logger?: Pick<Logger, 'warn'>;
}

interface Stored {
  descriptor: RegionDescriptor | undefined;
  modRevision: string;
  /** Set when the value is not a usable descriptor. */
  corrupt?: MemfabricError;
}

export class EtcdCatalog implements Catalog {
  readonly kind = 'etcd' as const;
  readonly connection: EtcdConnection;
  private readonly logger: Pick<Logger, 'warn'> | undefined;

  constructor(options: EtcdCatalogOptions) {
    this.connection = new EtcdConnection(options);
    this.logger = options.logger;
  }

  async create(descriptor: RegionDescriptor): Promise<void> {
    checkGiven(descriptor, 'create');
    const key = Buffer.from(EtcdKeys.region(descriptor.tenant, descriptor.name));
    const value = Buffer.from(JSON.stringify(descriptor));
    const answer = await this.connection.run(
      `create region ${describe(descriptor)}`,
      () =>
        this.connection.client.kv.txn({
          compare: [{ key, target: 'Create', result: 'Equal', create_revision: 0 }],
          success: [{ request_put: { key, value } }],
          failure: [{ request_range: { key } }],
        }),
      'write',
    );
    if (answer.succeeded) return;
    const stored = this.decode(answer.responses[0]?.response_range.kvs[0]);
    if (stored && sameWrite(stored.descriptor, descriptor)) return; // our own retried write
    throw new MemfabricError(
      ErrorCodes.ALREADY_EXISTS,
      `a region named ${describe(descriptor)} already exists${stored?.corrupt ? ' (its catalog entry is damaged)' : ''}; ` +
        'choose another name, or open or delete the existing region',
    );
  }

  async update(next: RegionDescriptor): Promise<void> {
    checkGiven(next, 'update');
    const key = Buffer.from(EtcdKeys.region(next.tenant, next.name));
    const value = Buffer.from(JSON.stringify(next));
    for (let round = 0; round < CAS_ROUNDS_MAX; round++) {
      const stored = await this.read(key, `read region ${describe(next)}`);
      if (stored && sameWrite(stored.descriptor, next)) return; // already applied (a retried write)
      if (!stored || (stored.descriptor && stored.descriptor.id !== next.id)) {
        throw new MemfabricError(
          ErrorCodes.NOT_FOUND,
          `region ${describe(next)} is no longer in the catalog (deleted${stored ? ', and its name reused' : ''}); reopen it by name`,
        );
      }
      const current = stored.descriptor?.generation;
      if (current !== next.generation - 1) {
        throw new MemfabricError(
          ErrorCodes.STALE_GENERATION,
          `region ${describe(next)} is at generation ${current ?? '(damaged entry)'}, not ${next.generation - 1}: ` +
            'another client changed it first; reopen the region and try again',
        );
      }
      const answer = await this.connection.run(
        `update region ${describe(next)}`,
        () =>
          this.connection.client.kv.txn({
            compare: [{ key, target: 'Mod', result: 'Equal', mod_revision: stored.modRevision }],
            success: [{ request_put: { key, value } }],
            failure: [],
          }),
        'write',
      );
      if (answer.succeeded) return;
      // Someone wrote between our read and our compare (or our own write landed): read again.
    }
    throw new MemfabricError(
      ErrorCodes.STALE_GENERATION,
      `region ${describe(next)} kept changing under ${CAS_ROUNDS_MAX} attempts to update it; reopen it and try again`,
    );
  }

  async get(tenant: string, name: string): Promise<CatalogEntry | undefined> {
    const stored = await this.read(
      Buffer.from(EtcdKeys.region(tenant, name)),
      `read region ${tenant}/${name}`,
    );
    return stored?.descriptor ? entry(stored.descriptor) : undefined;
  }

  async list(tenant?: string): Promise<CatalogEntry[]> {
    const prefix = tenant === undefined ? EtcdKeys.regions : EtcdKeys.regionsOf(tenant);
    const { kvs } = await this.connection.rangeAll('list regions', prefix);
    const entries: CatalogEntry[] = [];
    for (const kv of kvs) {
      const descriptor = this.decode(kv)?.descriptor;
      if (descriptor) entries.push(entry(descriptor));
    }
    return entries;
  }

  async remove(descriptor: RegionRef): Promise<void> {
    const key = Buffer.from(EtcdKeys.region(descriptor.tenant, descriptor.name));
    for (let round = 0; round < CAS_ROUNDS_MAX; round++) {
      const stored = await this.read(key, `read region ${describe(descriptor)}`);
      // Absent, or another region under the name now: nothing of ours to remove.
      if (!stored || stored.descriptor?.id !== descriptor.id) return;
      const answer = await this.connection.run(
        `remove region ${describe(descriptor)}`,
        () =>
          this.connection.client.kv.txn({
            compare: [{ key, target: 'Mod', result: 'Equal', mod_revision: stored.modRevision }],
            success: [{ request_delete_range: { key } }],
            failure: [],
          }),
        'write',
      );
      if (answer.succeeded) return;
    }
    throw new MemfabricError(
      ErrorCodes.STALE_GENERATION,
      `region ${describe(descriptor)} kept changing under ${CAS_ROUNDS_MAX} attempts to remove it; try again`,
    );
  }

  close(): Promise<void> {
    this.connection.close();
    return Promise.resolve();
  }

  private async read(key: Buffer, what: string): Promise<Stored | undefined> {
    const answer = await this.connection.run(what, () => this.connection.client.kv.range({ key }));
    return this.decode(answer.kvs[0]);
  }

  /** The stored descriptor of a key-value, or a corrupt marker (logged); undefined for no key. */
  private decode(kv: IKeyValue | undefined): Stored | undefined {
    if (!kv) return undefined;
    const where = `etcd key ${kv.key.toString()}`;
    try {
      let value: unknown;
      try {
        value = JSON.parse(kv.value.toString());
      } catch {
        value = undefined;
      }
      return { descriptor: parseDescriptor(value, where), modRevision: kv.mod_revision };
    } catch (error) {
      const corrupt = error as MemfabricError;
      if (this.logger)
        this.logger.warn(
          { key: kv.key.toString(), code: corrupt.code, reason: corrupt.message },
          'catalog entry skipped',
        );
      else process.emitWarning(corrupt.message, { code: corrupt.code });
      return { descriptor: undefined, modRevision: kv.mod_revision, corrupt };
    }
  }
}

/** A descriptor handed in must be whole and sealed: a caller's bug is not a damaged entry. */
function checkGiven(descriptor: RegionDescriptor, what: string): void {
  try {
    parseDescriptor(descriptor, 'the given descriptor');
  } catch (error) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `EtcdCatalog.${what}: ${(error as Error).message.replace(/;.*$/, '')}; build it with sealDescriptor or nextGeneration`,
      { cause: error },
    );
  }
}

function describe(descriptor: { tenant: string; name: string }): string {
  return `${descriptor.tenant}/${descriptor.name}`;
}

function entry(descriptor: RegionDescriptor): CatalogEntry {
  return { descriptor, shardsFound: descriptor.shards.map((shard) => shard.index) };
}

/** The stored descriptor is exactly `wrote` (so the write in question has landed). */
function sameWrite(stored: RegionDescriptor | undefined, wrote: RegionDescriptor): boolean {
  return (
    stored !== undefined &&
    stored.id === wrote.id &&
    stored.generation === wrote.generation &&
    stored.checksum === wrote.checksum
  );
}
