/**
 * The appliances a fabric may use, given by their admin URLs (each with the token to send and
 * the CA to trust, or the fabric-wide ones), and what they last said about themselves (free
 * memory, where their NBD server listens); and the admin calls the fabric makes on them
 * (regions with their descriptors, the names table: docs/appliance.md).
 */
import { setTimeout as delay } from 'node:timers/promises';
import { adminRequest, type AdminTarget } from '../appliance/admin-client.js';
import type { Endpoint } from '../appliance/appliance.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

/**
 * deleteRegion retries MF_BUSY for this long: a connection that ended abruptly (no NBD_CMD_DISC)
 * is counted until the appliance sees its socket close, which may take a moment.
 */
export const DELETE_BUSY_RETRY_MS = 3000;
const DELETE_BUSY_BACKOFF_MS_FIRST = 10;
const DELETE_BUSY_BACKOFF_MS_MAX = 200;

/** A region as an appliance lists it (GET /v1/regions, GET /v1/regions/:name). */
export interface ApplianceRegion {
  name: string;
  /** Null only for a region found in the data directory whose metadata could not be read. */
  size: number | null;
  tenant: string | null;
  readOnly: boolean | null;
  /** `ready`, or for file-backed regions found at start `loading`, `failed` or `corrupt`. */
  state: 'ready' | 'loading' | 'failed' | 'corrupt';
  /** NBD connections attached now. */
  connections: number;
  /**
   * The fabric region descriptor the region carries, as stored (the appliance checks only its
   * `generation`): check it with parseDescriptor before use. Absent when none was set.
   */
  descriptor?: unknown;
  /** The image file, for file-backed regions. */
  file: string | null;
  createdAt: string | null;
}

/** What GET /v1/regions/:name answers for a region that migrated to another appliance. */
export interface MovedApplianceRegion {
  name: string;
  size: number;
  tenant: string;
  movedTo: { appliance: string; region: string; nbd: Endpoint };
  movedAt: string;
}

/** A claim in an appliance's names table (POST /v1/names). */
export interface NameClaim {
  name: string;
  tenant: string;
  /** Whose claim it is: a claim again with the same id is answered with the same record. */
  id: string;
  /** When the name was claimed (ISO 8601). */
  createdAt: string;
}

export interface ApplianceState {
  url: string;
  reachable: boolean;
  nbd: Endpoint;
  capacityBytes: number;
  freeBytes: number;
  /** Why it is unreachable. */
  error?: string;
}

interface StatsAnswer {
  memory: { capacityBytes: number; freeBytes: number };
  endpoints: { nbd: Endpoint };
}

/** An appliance as a fabric is given it: its admin URL, or the URL with its own token and CA. */
export type ApplianceAccess = string | AdminTarget;

/** What applies to appliances given without a token or CA of their own. */
export interface DirectoryDefaults {
  token?: string;
  ca?: string | Buffer;
}

export class ApplianceDirectory {
  private readonly known: string[] = [];
  private readonly access = new Map<string, AdminTarget>();
  private readonly timeoutMs: number;
  private readonly defaults: DirectoryDefaults;
  private states = new Map<string, ApplianceState>();

  /**
   * `appliances` may be empty only when they are discovered (fleet mode adds them as etcd
   * reports them); a fabric given a static list needs at least one.
   */
  constructor(
    appliances: ApplianceAccess[],
    timeoutMs: number,
    defaults: DirectoryDefaults = {},
    discovered = false,
  ) {
    if (appliances.length === 0 && !discovered) {
      throw invalidArgument('a fabric needs at least one appliance admin URL');
    }
    this.timeoutMs = timeoutMs;
    this.defaults = defaults;
    for (const appliance of appliances) this.add(appliance);
  }

  get urls(): readonly string[] {
    return this.known;
  }

  /**
   * Adds an appliance (a replacement brought in for a rebuild, a new machine, where a region
   * moved). A URL already known keeps its token unless this call gives one.
   */
  add(appliance: ApplianceAccess): void {
    const given = typeof appliance === 'string' ? { url: appliance } : appliance;
    const url = given?.url;
    try {
      if (typeof url !== 'string') throw new TypeError('no url');
      new URL(url);
    } catch {
      throw invalidArgument(
        `${JSON.stringify(url ?? appliance)} is not an appliance admin URL (like http://127.0.0.1:10880)`,
      );
    }
    if (!this.known.includes(url)) this.known.push(url);
    if (typeof appliance !== 'string' || !this.access.has(url)) this.access.set(url, given);
  }

  /** How to call the appliance at `url`: its URL with the token and CA that apply to it. */
  target(url: string): AdminTarget {
    const given = this.access.get(url);
    const token = given?.token ?? this.defaults.token;
    const ca = given?.ca ?? this.defaults.ca;
    return { url, ...(token !== undefined ? { token } : {}), ...(ca !== undefined ? { ca } : {}) };
  }

  /** Asks every appliance for its state, in parallel; unreachable ones are marked so. */
  async refresh(): Promise<ApplianceState[]> {
    const states = await Promise.all(
      this.known.map(async (url): Promise<ApplianceState> => {
        try {
          const stats = await adminRequest<StatsAnswer>(
            this.target(url),
            'GET',
            '/v1/stats',
            undefined,
            this.timeoutMs,
          );
          return {
            url,
            reachable: true,
            nbd: stats.endpoints.nbd,
            capacityBytes: stats.memory.capacityBytes,
            freeBytes: stats.memory.freeBytes,
          };
        } catch (error) {
          return {
            url,
            reachable: false,
            nbd: { host: '', port: 0 },
            capacityBytes: 0,
            freeBytes: 0,
            error: (error as Error).message,
          };
        }
      }),
    );
    this.states = new Map(states.map((state) => [state.url, state]));
    return states;
  }

  state(url: string): ApplianceState | undefined {
    return this.states.get(url);
  }

  /** Creates a region (a shard); `descriptor` is the fabric region's descriptor it carries. */
  createRegion(
    url: string,
    body: { name: string; size: number; tenant: string; descriptor?: object },
  ): Promise<unknown> {
    return adminRequest(this.target(url), 'POST', '/v1/regions', body, this.timeoutMs);
  }

  /** Every region of the appliance that this fabric's token may see. */
  async listRegions(url: string): Promise<ApplianceRegion[]> {
    const answer = await adminRequest<{ regions: ApplianceRegion[] }>(
      this.target(url),
      'GET',
      '/v1/regions',
      undefined,
      this.timeoutMs,
    );
    return answer.regions;
  }

  /** One region, where it moved (a record with `movedTo`), or undefined when there is none. */
  async getRegion(url: string, name: string): Promise<ApplianceRegion | MovedApplianceRegion | undefined> {
    try {
      return await adminRequest<ApplianceRegion | MovedApplianceRegion>(
        this.target(url),
        'GET',
        regionPath(name),
        undefined,
        this.timeoutMs,
      );
    } catch (error) {
      if (error instanceof MemfabricError && error.code === ErrorCodes.NOT_FOUND) return undefined;
      throw error;
    }
  }

  /**
   * Replaces the descriptor region `region` carries; resolves with the generation stored.
   * MF_STALE_GENERATION when the appliance holds the same or a newer generation.
   */
  async putDescriptor(url: string, region: string, descriptor: object): Promise<number> {
    const answer = await adminRequest<{ generation: number }>(
      this.target(url),
      'PUT',
      `${regionPath(region)}/descriptor`,
      { descriptor },
      this.timeoutMs,
    );
    return answer.generation;
  }

  /**
   * Claims (tenant, name) for `id` in the appliance's names table; resolves with the record
   * (the existing one when `id` held it already). MF_ALREADY_EXISTS when another id holds it.
   */
  claimName(url: string, claim: { name: string; tenant: string; id: string }): Promise<NameClaim> {
    return adminRequest<NameClaim>(this.target(url), 'POST', '/v1/names', claim, this.timeoutMs);
  }

  /** Releases (tenant, name) held by `id` (nothing held: done). MF_CONFLICT when another id holds it. */
  releaseName(url: string, tenant: string, name: string, id: string): Promise<void> {
    return adminRequest<void>(
      this.target(url),
      'DELETE',
      `/v1/names/${encodeURIComponent(tenant)}/${encodeURIComponent(name)}?id=${encodeURIComponent(id)}`,
      undefined,
      this.timeoutMs,
    );
  }

  /** The names table (a tenant token sees its own tenant's names only). */
  async listNames(url: string): Promise<NameClaim[]> {
    const answer = await adminRequest<{ names: NameClaim[] }>(
      this.target(url),
      'GET',
      '/v1/names',
      undefined,
      this.timeoutMs,
    );
    return answer.names;
  }

  /**
   * Deletes a region. MF_BUSY (NBD connections still counted) is retried with a short backoff
   * for up to DELETE_BUSY_RETRY_MS, since a connection that just ended may be counted for a
   * moment; after that the MF_BUSY is thrown. Other failures (MF_NOT_FOUND included) are
   * thrown at once.
   */
  async deleteRegion(url: string, name: string): Promise<void> {
    const deadline = Date.now() + DELETE_BUSY_RETRY_MS;
    let backoff = DELETE_BUSY_BACKOFF_MS_FIRST;
    for (;;) {
      try {
        await adminRequest<void>(this.target(url), 'DELETE', regionPath(name), undefined, this.timeoutMs);
        return;
      } catch (error) {
        if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.BUSY) throw error;
        if (Date.now() + backoff > deadline) {
          throw new MemfabricError(
            ErrorCodes.BUSY,
            `${error.message} (still so after retrying for ${DELETE_BUSY_RETRY_MS} ms)`,
            { cause: error },
          );
        }
        await delay(backoff);
        backoff = Math.min(backoff * 2, DELETE_BUSY_BACKOFF_MS_MAX);
      }
    }
  }
}

function regionPath(name: string): string {
  return `/v1/regions/${encodeURIComponent(name)}`;
}
