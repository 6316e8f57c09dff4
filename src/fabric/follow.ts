/**
 * Finding a region after it migrated (appliance/migration.ts): an appliance keeps answering
 * GET /v1/regions/:name for a region that moved away, with `movedTo: { appliance, region, nbd }`.
 * resolveRegion follows those records, at most `hopsMax` of them, to the appliance that serves
 * the region now, and returns where to connect.
 *
 *   const where = await resolveRegion('http://10.0.0.1:10880', 'vm1', { waitMs: 5000 });
 *   const client = await NbdClient.connect({ ...where.nbd, exportName: where.region });
 *
 * After a write fails with ESHUTDOWN (the region's migration blackout, or it has moved) or the
 * connection closes, resolve again and retry the writes that were not acknowledged there. With
 * `waitMs`, a region found in its blackout is polled (every RESOLVE_POLL_MS) until it has moved
 * or its migration failed (then it stays where it was), for at most `waitMs`.
 */
import { adminRequest, adminTarget, type AdminBase, type AdminTarget } from '../appliance/admin-client.js';
import type { MovedTo } from '../appliance/region.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

/** Forwarding records followed at most (a region migrated this many times in a row). */
export const RESOLVE_HOPS_MAX_DEFAULT = 8;
export const RESOLVE_HOPS_MAX = 64;
export const RESOLVE_POLL_MS = 10;
export const RESOLVE_TIMEOUT_MS_DEFAULT = 10_000;

export interface ResolvedRegion {
  /** Admin URL of the appliance that serves the region now. */
  appliance: string;
  /** The region's name there. */
  region: string;
  /** That appliance's NBD endpoint (a wildcard bind address is replaced by the URL's host). */
  nbd: { host: string; port: number };
  /** Forwarding records followed. */
  hops: number;
}

export interface ResolveOptions {
  /** Default 8, at most 64. */
  hopsMax?: number;
  /** Wait this long for a migration blackout to end (default 0: do not wait). */
  waitMs?: number;
  /** Per admin API call. Default 10 s. */
  timeoutMs?: number;
  /**
   * How to call an appliance the region moved to (its token and CA); the first appliance is
   * called as given. Default: the CA given
   * with the first appliance and no token (a token is never sent to an appliance it was not
   * given for; reads without one work from the same machine).
   */
  targetFor?: (url: string) => AdminTarget;
}

interface RegionAnswer {
  movedTo?: MovedTo;
}

interface StatsAnswer {
  endpoints: { nbd: { host: string; port: number } };
}

/** Where region `name` of the appliance at `adminUrl` is served now, following migrations. */
export async function resolveRegion(
  admin: AdminBase,
  name: string,
  options: ResolveOptions = {},
): Promise<ResolvedRegion> {
  const first = adminTarget(admin);
  const adminUrl = first.url;
  const others =
    options.targetFor ??
    ((url: string): AdminTarget => ({ url, ...(first.ca !== undefined ? { ca: first.ca } : {}) }));
  const targetFor = (url: string): AdminTarget => (url === adminUrl ? first : others(url));
  const hopsMax = options.hopsMax ?? RESOLVE_HOPS_MAX_DEFAULT;
  if (!Number.isInteger(hopsMax) || hopsMax < 0 || hopsMax > RESOLVE_HOPS_MAX) {
    throw invalidArgument(`hopsMax must be a whole number from 0 to ${RESOLVE_HOPS_MAX}`);
  }
  const timeoutMs = options.timeoutMs ?? RESOLVE_TIMEOUT_MS_DEFAULT;
  const deadline = performance.now() + (options.waitMs ?? 0);
  let appliance = adminUrl;
  let region = name;
  const seen = new Set<string>();
  let rechecked = false;
  for (let hops = 0; hops <= hopsMax;) {
    const key = `${appliance} ${region}`;
    const path = `/v1/regions/${encodeURIComponent(region)}`;
    const api = targetFor(appliance);
    const answer = await adminRequest<RegionAnswer>(api, 'GET', path, undefined, timeoutMs);
    if (answer.movedTo) {
      if (seen.has(key)) {
        throw new MemfabricError(ErrorCodes.NOT_FOUND, `region ${name} moves in a loop (back to ${key})`);
      }
      seen.add(key);
      appliance = answer.movedTo.appliance;
      region = answer.movedTo.region;
      hops++;
      continue;
    }
    if (performance.now() < deadline) {
      const state = await migrationState(api, region, timeoutMs);
      if (state === 'blackout') {
        await new Promise((resolve) => setTimeout(resolve, RESOLVE_POLL_MS));
        continue; // ask the same appliance again: moved, or back to serving
      }
      // Moved between our two questions: the region now answers with movedTo. Once only, since
      // a region that moved away and was created here again keeps its old migration record.
      if (state === 'done' && !rechecked) {
        rechecked = true;
        continue;
      }
    }
    const stats = await adminRequest<StatsAnswer>(api, 'GET', '/v1/stats', undefined, timeoutMs);
    return { appliance, region, nbd: publicNbd(stats.endpoints.nbd, appliance), hops };
  }
  throw new MemfabricError(
    ErrorCodes.NOT_FOUND,
    `region ${name} at ${adminUrl} moved more than ${hopsMax} times; last seen at ${appliance} as ${region}`,
  );
}

/** The state of the region's latest migration on `appliance` ('none' when it never migrated). */
export async function migrationState(
  appliance: AdminBase,
  region: string,
  timeoutMs: number,
): Promise<string> {
  const path = `/v1/regions/${encodeURIComponent(region)}/migration`;
  try {
    return (await adminRequest<{ state: string }>(appliance, 'GET', path, undefined, timeoutMs)).state;
  } catch (error) {
    if (error instanceof MemfabricError && error.code === ErrorCodes.NOT_FOUND) return 'none';
    throw error;
  }
}

function publicNbd(nbd: { host: string; port: number }, adminUrl: string): { host: string; port: number } {
  const wildcard = nbd.host === '' || nbd.host === '0.0.0.0' || nbd.host === '::';
  return {
    host: wildcard ? new URL(adminUrl).hostname.replace(/^\[(.*)\]$/, '$1') : nbd.host,
    port: nbd.port,
  };
}
