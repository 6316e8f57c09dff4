/**
 * The names table: (tenant, name) -> the id of whoever holds the name. It lets fabric clients
 * keep fabric region names unique without a service of their own: a client claims the name on
 * the appliances in one fixed order before it creates any shard, so of two clients creating
 * the same name, the first to win the first appliance wins, and the other is refused there
 * (MF_ALREADY_EXISTS, naming the holder) before it has made anything.
 *
 * A claim is idempotent for its id (claiming again answers the existing record), a release by
 * another id is refused (MF_CONFLICT), and releasing a name nobody holds succeeds, so a client
 * can retry either after a lost answer.
 *
 * With a data directory the table lives in DATA_DIR/names.json, replaced atomically
 * (temporary file, fsync, rename, fsync of the directory) before a change is answered, and
 * read at start; without one it is memory-only. Changes are made in memory in one synchronous
 * step (so two concurrent claims cannot both win) and then written, one write at a time, each
 * writing the table as it is then; a change whose write fails is undone (unless something else
 * changed the entry meanwhile) and the failure thrown.
 */
import { join } from 'node:path';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { writeFileAtomically, type FileLayer } from './file-layer.js';
import { TENANT_PATTERN } from './registry.js';

/**
 * Names: 1-200 characters of letters, digits and . _ : @ -, starting with a letter or digit
 * (they appear in URL paths, where '.' and '..' would be taken for path steps).
 */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$/;
/** Ids: what a client uses to tell its claims from others' (a random id per region). */
export const NAME_ID_PATTERN = /^[A-Za-z0-9._:@-]{1,128}$/;
/** At most this many names per appliance (about 30 MiB of table at most). */
export const NAMES_MAX = 65536;
export const NAMES_FILE = 'names.json';
const NAMES_FILE_MAGIC = 'memfabric-names';
const NAMES_FILE_VERSION = 1;

export interface NameRecord {
  name: string;
  tenant: string;
  id: string;
  /** When the name was claimed (ISO 8601). */
  createdAt: string;
}

export interface ClaimResult {
  record: NameRecord;
  /** False: `id` already held the name (an idempotent retry). */
  created: boolean;
}

export class NameTable {
  private readonly records = new Map<string, NameRecord>();
  private readonly path: string | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    dataDir: string | undefined,
    private readonly layer: FileLayer,
  ) {
    this.path = dataDir === undefined ? undefined : join(dataDir, NAMES_FILE);
  }

  /**
   * Reads the table from the data directory (nothing there: empty). A file that cannot be used
   * stops the start with MF_CORRUPT_FILE: starting with an empty table would let a second
   * client take a name a region still uses.
   */
  async load(): Promise<void> {
    if (this.path === undefined) return;
    let text: string;
    try {
      text = (await this.layer.readFile(this.path)).toString('utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw corrupt(
        this.path,
        `unreadable (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
        error,
      );
    }
    let parsed: { magic?: unknown; version?: unknown; names?: unknown };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch (error) {
      throw corrupt(this.path, 'not JSON', error);
    }
    if (parsed?.magic !== NAMES_FILE_MAGIC || parsed.version !== NAMES_FILE_VERSION) {
      throw corrupt(this.path, `not a names table version ${NAMES_FILE_VERSION}`);
    }
    if (!Array.isArray(parsed.names)) throw corrupt(this.path, 'no names list');
    for (const entry of parsed.names as Array<Partial<NameRecord>>) {
      if (
        typeof entry?.name !== 'string' ||
        !NAME_PATTERN.test(entry.name) ||
        typeof entry.tenant !== 'string' ||
        !TENANT_PATTERN.test(entry.tenant) ||
        typeof entry.id !== 'string' ||
        !NAME_ID_PATTERN.test(entry.id) ||
        typeof entry.createdAt !== 'string'
      ) {
        throw corrupt(this.path, `an entry is malformed: ${JSON.stringify(entry).slice(0, 200)}`);
      }
      this.records.set(key(entry.tenant, entry.name), {
        name: entry.name,
        tenant: entry.tenant,
        id: entry.id,
        createdAt: entry.createdAt,
      });
    }
  }

  get size(): number {
    return this.records.size;
  }

  /**
   * Claims (tenant, name) for `id`: a new record (created), the existing one when `id` holds it
   * already, or MF_ALREADY_EXISTS naming the holder.
   */
  async claim(request: { name: unknown; tenant: unknown; id: unknown }): Promise<ClaimResult> {
    const { name, tenant, id } = checkClaim(request);
    const k = key(tenant, name);
    const held = this.records.get(k);
    if (held !== undefined) {
      if (held.id === id) return { record: { ...held }, created: false };
      throw new MemfabricError(
        ErrorCodes.ALREADY_EXISTS,
        `the name "${name}" of tenant ${tenant} is held by id ${held.id} since ${held.createdAt}; ` +
          'choose another name, or delete that region first',
      );
    }
    if (this.records.size >= NAMES_MAX) {
      throw invalidArgument(
        `this appliance already holds ${NAMES_MAX} names, the most it keeps; release unused ones (DELETE /v1/names/...)`,
      );
    }
    const record: NameRecord = { name, tenant, id, createdAt: new Date().toISOString() };
    this.records.set(k, record);
    try {
      await this.persist();
    } catch (error) {
      if (this.records.get(k) === record) this.records.delete(k);
      throw error;
    }
    return { record: { ...record }, created: true };
  }

  /**
   * Releases (tenant, name) held by `id`. Nothing held: done (a retry after a lost answer).
   * Held by another id: MF_CONFLICT.
   */
  async release(tenant: unknown, name: unknown, id: unknown): Promise<void> {
    const checked = checkClaim({ name, tenant, id });
    const k = key(checked.tenant, checked.name);
    const held = this.records.get(k);
    if (held === undefined) return;
    if (held.id !== checked.id) {
      throw new MemfabricError(
        ErrorCodes.CONFLICT,
        `the name "${checked.name}" of tenant ${checked.tenant} is held by id ${held.id} (since ${held.createdAt}), ` +
          `not ${checked.id}; only its holder may release it`,
      );
    }
    this.records.delete(k);
    try {
      await this.persist();
    } catch (error) {
      if (!this.records.has(k)) this.records.set(k, held);
      throw error;
    }
  }

  /** Every record (of `tenant` only, when given), by tenant then name. */
  list(tenant?: string): NameRecord[] {
    return [...this.records.values()]
      .filter((record) => tenant === undefined || record.tenant === tenant)
      .sort((a, b) => (a.tenant === b.tenant ? compare(a.name, b.name) : compare(a.tenant, b.tenant)))
      .map((record) => ({ ...record }));
  }

  /** Waits for the writes under way (appliance stop). */
  async close(): Promise<void> {
    await this.writing.catch(() => undefined);
  }

  /** Writes the table as it is when the write starts; resolves when that write is durable. */
  private persist(): Promise<void> {
    const path = this.path;
    if (path === undefined) return Promise.resolve();
    const write = this.writing
      .catch(() => undefined)
      .then(() => {
        const body = { magic: NAMES_FILE_MAGIC, version: NAMES_FILE_VERSION, names: this.list() };
        return writeFileAtomically(this.layer, path, Buffer.from(`${JSON.stringify(body)}\n`));
      });
    this.writing = write;
    return write;
  }
}

function key(tenant: string, name: string): string {
  // Neither may contain '/', so the pair is unambiguous.
  return `${tenant}/${name}`;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function checkClaim(request: { name: unknown; tenant: unknown; id: unknown }): {
  name: string;
  tenant: string;
  id: string;
} {
  const { name, tenant, id } = request;
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw invalidArgument(
      `name ${JSON.stringify(name) ?? 'missing'} must be 1-200 characters of letters, digits, '.', '_', ':', '@' or '-', ` +
        'starting with a letter or digit',
    );
  }
  if (typeof tenant !== 'string' || !TENANT_PATTERN.test(tenant)) {
    throw invalidArgument(
      `tenant ${JSON.stringify(tenant) ?? 'missing'} must be 1-64 characters of letters, digits, '.', '_' or '-'`,
    );
  }
  if (typeof id !== 'string' || !NAME_ID_PATTERN.test(id)) {
    throw invalidArgument(
      `id ${JSON.stringify(id) ?? 'missing'} must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-'`,
    );
  }
  return { name, tenant, id };
}

function corrupt(path: string, why: string, cause?: unknown): MemfabricError {
  return new MemfabricError(
    ErrorCodes.CORRUPT_FILE,
    `the names table ${path} is ${why}; restore it from a backup, or move it away to start with no names ` +
      '(then names of existing fabric regions can be taken again)',
    { cause },
  );
}
