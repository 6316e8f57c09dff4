/**
 * The appliances a fabric may use, given by their admin URLs (each with the token to send and
 * the CA to trust, or the fabric-wide ones), and what they last said about themselves (free
 * memory, where their NBD server listens).
 */
import { adminRequest, type AdminTarget } from '../appliance/admin-client.js';
import type { Endpoint } from '../appliance/appliance.js';
import { invalidArgument } from '../errors.js';

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

  constructor(appliances: ApplianceAccess[], timeoutMs: number, defaults: DirectoryDefaults = {}) {
    if (appliances.length === 0) throw invalidArgument('a fabric needs at least one appliance admin URL');
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

  createRegion(url: string, body: { name: string; size: number; tenant: string }): Promise<unknown> {
    return adminRequest(this.target(url), 'POST', '/v1/regions', body, this.timeoutMs);
  }

  deleteRegion(url: string, name: string): Promise<void> {
    return adminRequest<void>(
      this.target(url),
      'DELETE',
      `/v1/regions/${encodeURIComponent(name)}`,
      undefined,
      this.timeoutMs,
    );
  }
}
