/**
 * The appliances a fabric may use, given by their admin URLs, and what they last said about
 * themselves (free memory, where their NBD server listens).
 */
import { adminRequest } from '../appliance/admin-client.js';
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

export class ApplianceDirectory {
  private readonly known: string[];
  private readonly timeoutMs: number;
  private states = new Map<string, ApplianceState>();

  constructor(urls: string[], timeoutMs: number) {
    if (urls.length === 0) throw invalidArgument('a fabric needs at least one appliance admin URL');
    for (const url of urls) {
      try {
        new URL(url);
      } catch {
        throw invalidArgument(`"${url}" is not an appliance admin URL (like http://127.0.0.1:10880)`);
      }
    }
    this.known = [...new Set(urls)];
    this.timeoutMs = timeoutMs;
  }

  get urls(): readonly string[] {
    return this.known;
  }

  /** Adds an appliance (a replacement brought in for a rebuild, a new machine). */
  add(url: string): void {
    try {
      new URL(url);
    } catch {
      throw invalidArgument(`"${url}" is not an appliance admin URL (like http://127.0.0.1:10880)`);
    }
    if (!this.known.includes(url)) this.known.push(url);
  }

  /** Asks every appliance for its state, in parallel; unreachable ones are marked so. */
  async refresh(): Promise<ApplianceState[]> {
    const states = await Promise.all(
      this.known.map(async (url): Promise<ApplianceState> => {
        try {
          const stats = await adminRequest<StatsAnswer>(url, 'GET', '/v1/stats', undefined, this.timeoutMs);
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
    return adminRequest(url, 'POST', '/v1/regions', body, this.timeoutMs);
  }

  deleteRegion(url: string, name: string): Promise<void> {
    return adminRequest<void>(
      url,
      'DELETE',
      `/v1/regions/${encodeURIComponent(name)}`,
      undefined,
      this.timeoutMs,
    );
  }
}
