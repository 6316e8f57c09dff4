/**
 * Who may call what on the admin API. Every request is identified once, in an onRequest hook,
 * from its `Authorization: Bearer <token>` header:
 *
 *   admin      the appliance's admin token: everything;
 *   tenant T   a token from the tenant tokens: only T's regions. Another tenant's region
 *              answers 404 exactly as if it did not exist; appliance-wide routes answer 403;
 *              creating a region makes it T's (naming another tenant is 403);
 *   anonymous  no header: reads only, and only from a loopback client that asked for a
 *              loopback name (Host), while read access is 'open' (the default, so Prometheus
 *              and the dashboard work on the machine itself; Redis's protected mode in
 *              spirit). Anything else answers 401.
 * A header that is present but not a valid token is always 401, even where anonymous access
 * would do: a client with a wrong token learns so at once instead of seeing less.
 *
 * Routes are classed in ROUTE_ACCESS, one table for the whole API; a route missing from it is
 * treated as appliance-wide (admin only for writes, tenants refused), so forgetting it fails
 * closed. Tokens are compared as SHA-256 digests: the admin token's with
 * crypto.timingSafeEqual, tenant tokens by looking the digest up in a map. Either way the time
 * taken depends on digests, not on the bytes of any token, so it reveals nothing an attacker
 * could use to guess one.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { isLoopback } from './exposure.js';
import type { RegionRegistry } from './registry.js';

export type ReadAccess = 'open' | 'token';

export type Identity = { kind: 'admin' } | { kind: 'tenant'; tenant: string } | { kind: 'anonymous' };

/**
 * appliance-write, appliance-read: the appliance as a whole (admin only; anonymous reads
 *   allowed as above). region-*: one region, named by `:name`; tenants reach their own only.
 *   region-list: filtered to the tenant. info: GET /v1/stats, which tenants see reduced.
 *   names: the names table (names-routes.ts); a tenant claims, releases and sees its own
 *   tenant's names only (checked there, since the tenant is in the body or the path).
 *   public: files anyone who reaches the port may fetch, token or not (the dashboard's copy of
 *   uPlot, which is public code and reveals nothing about the appliance).
 */
export type RouteAccess =
  | 'appliance-write'
  | 'appliance-read'
  | 'region-create'
  | 'region-write'
  | 'region-read'
  | 'region-list'
  | 'names'
  | 'info'
  | 'public';

export const ROUTE_ACCESS: Readonly<Record<string, RouteAccess>> = {
  'POST /v1/regions': 'region-create',
  'GET /v1/regions': 'region-list',
  'GET /v1/regions/:name': 'region-read',
  'DELETE /v1/regions/:name': 'region-write',
  'POST /v1/regions/:name/clone': 'region-write',
  'POST /v1/regions/:name/chunks': 'region-write',
  'GET /v1/regions/:name/chunks': 'region-read',
  'DELETE /v1/regions/:name/chunks/:offset': 'region-write',
  // Migration sends a tenant's bytes to an appliance of the caller's choosing: admin only.
  'POST /v1/regions/:name/migrate': 'appliance-write',
  'GET /v1/regions/:name/migration': 'region-read',
  'PUT /v1/regions/:name/descriptor': 'region-write',
  'POST /v1/names': 'names',
  'GET /v1/names': 'names',
  'DELETE /v1/names/:tenant/:name': 'names',
  'GET /v1/stats': 'info',
  'GET /metrics': 'appliance-read',
  'GET /': 'appliance-read',
  'GET /v1/dashboard': 'appliance-read',
  'GET /dashboard/:asset': 'public',
};

/** The access class of a request (HEAD is a GET; unknown routes are appliance-wide). */
export function routeAccess(method: string, url: string | undefined): RouteAccess {
  const verb = method === 'HEAD' ? 'GET' : method;
  const known = url === undefined ? undefined : ROUTE_ACCESS[`${verb} ${url}`];
  return known ?? (verb === 'GET' ? 'appliance-read' : 'appliance-write');
}

/**
 * Whether a request without a token may read: read access is open, the client is on this
 * machine, and it asked for a loopback name. The last check stops DNS rebinding: a web page
 * whose name an attacker points at 127.0.0.1 makes the operator's browser a local client, but
 * its requests carry the attacker's name in Host.
 */
export function anonymousReadAllowed(
  readAccess: ReadAccess,
  remoteAddress: string | undefined,
  hostHeader: string | undefined,
): boolean {
  return readAccess === 'open' && isLoopback(remoteAddress) && isLoopback(hostName(hostHeader));
}

/** The name in a Host header, without the port ('[::1]:80' -> '::1'). */
function hostName(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const bracketed = /^\[([^\]]*)\](?::\d*)?$/.exec(header);
  if (bracketed) return bracketed[1];
  return header.replace(/:\d*$/, '');
}

export interface AdminAuthOptions {
  adminToken: string;
  /** Where the admin token is kept, for messages (undefined: in memory only). */
  adminTokenFile?: string;
  tenantTokens?: ReadonlyMap<string, string>;
  readAccess?: ReadAccess;
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export class AdminAuth {
  readonly readAccess: ReadAccess;
  readonly adminTokenFile: string | undefined;
  private readonly adminDigest: Buffer;
  /** Requests refused so far, by reason (for the metrics). */
  readonly refusals = { unauthorized: 0, forbidden: 0 };
  /** Tenant by the hex SHA-256 digest of its token. */
  private readonly tenantByDigest = new Map<string, string>();

  constructor(options: AdminAuthOptions) {
    this.readAccess = options.readAccess ?? 'open';
    this.adminTokenFile = options.adminTokenFile;
    this.adminDigest = digest(options.adminToken);
    for (const [tenant, token] of options.tenantTokens ?? new Map<string, string>()) {
      if (token === options.adminToken) {
        throw new MemfabricError(
          ErrorCodes.INVALID_ARGUMENT,
          `the token of tenant ${tenant} is the admin token; give each tenant a token of its own`,
        );
      }
      this.tenantByDigest.set(digest(token).toString('hex'), tenant);
    }
  }

  get tenants(): string[] {
    return [...this.tenantByDigest.values()];
  }

  /** The identity an Authorization header proves; 'invalid' for a header that proves none. */
  identify(header: string | undefined): Identity | 'invalid' {
    if (header === undefined) return { kind: 'anonymous' };
    const match = /^Bearer +([\x21-\x7e]{1,4096}) *$/i.exec(header);
    if (!match) return 'invalid';
    const presented = digest(match[1]!);
    if (timingSafeEqual(presented, this.adminDigest)) return { kind: 'admin' };
    // Looked up by digest: whatever the lookup's timing reveals is about a SHA-256 digest,
    // which says nothing usable about any token (and costs the same for 1 or 1024 tenants).
    const tenant = this.tenantByDigest.get(presented.toString('hex'));
    return tenant === undefined ? 'invalid' : { kind: 'tenant', tenant };
  }

  /** Where a client finds the admin token, for the messages of 401 answers. */
  tokenHint(): string {
    const where = this.adminTokenFile
      ? `the admin token is in ${this.adminTokenFile} on the appliance's machine`
      : 'the admin token is held in memory by the program that started the appliance (appliance.adminToken)';
    return `send "Authorization: Bearer <token>"; ${where} (memfabric CLI: --token, MEMFABRIC_TOKEN or --token-file)`;
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity;
  }
}

/** The tenant a request is confined to, or undefined for the admin (and anonymous readers). */
export function tenantOf(request: FastifyRequest): string | undefined {
  return request.identity.kind === 'tenant' ? request.identity.tenant : undefined;
}

function unauthorized(auth: AdminAuth, message: string): MemfabricError {
  auth.refusals.unauthorized++;
  return new MemfabricError(ErrorCodes.UNAUTHORIZED, message);
}

/** A 403 answer, counted for the metrics. */
export function forbidden(auth: AdminAuth, message: string): MemfabricError {
  auth.refusals.forbidden++;
  return new MemfabricError(ErrorCodes.FORBIDDEN, message);
}

/** The same answer as for a region that does not exist (registry.require's). */
function noSuchRegion(name: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.NOT_FOUND,
    `no region named "${name}"; list regions with GET /v1/regions`,
  );
}

/** Installs the hooks that identify and authorize every request of `app`. */
export function installAuth(app: FastifyInstance, auth: AdminAuth, registry: RegionRegistry): void {
  // null until onRequest sets it (fastify wants no shared object as the initial value).
  app.decorateRequest('identity', null as never);

  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    if (routeAccess(request.method, request.routeOptions.url) === 'public') {
      request.identity = { kind: 'anonymous' };
      return;
    }
    const identity = auth.identify(request.headers.authorization);
    const what = `${request.method} ${request.url.split('?')[0]}`;
    if (identity === 'invalid') {
      void reply.header('www-authenticate', 'Bearer realm="memfabric", error="invalid_token"');
      throw unauthorized(auth, `the bearer token is not valid for this appliance; ${auth.tokenHint()}`);
    }
    request.identity = identity;
    const access = routeAccess(request.method, request.routeOptions.url);
    const reads = request.method === 'GET' || request.method === 'HEAD';
    if (identity.kind === 'anonymous') {
      if (!reads) {
        void reply.header('www-authenticate', 'Bearer realm="memfabric"');
        throw unauthorized(auth, `${what} needs a token; ${auth.tokenHint()}`);
      }
      if (!anonymousReadAllowed(auth.readAccess, request.socket.remoteAddress, request.headers.host)) {
        void reply.header('www-authenticate', 'Bearer realm="memfabric"');
        const why =
          auth.readAccess === 'token'
            ? 'reads need a token on this appliance'
            : 'only clients on this machine asking for a loopback address may read without one';
        throw unauthorized(auth, `${what} needs a token here (${why}); ${auth.tokenHint()}`);
      }
      return;
    }
    if (identity.kind === 'admin') return;
    if (access === 'appliance-write' || access === 'appliance-read') {
      throw forbidden(
        auth,
        `a token of tenant ${identity.tenant} may not use ${what}: it reaches beyond the tenant's regions; use the admin token`,
      );
    }
    const name = (request.params as { name?: unknown } | undefined)?.name;
    if (typeof name === 'string' && access.startsWith('region-')) {
      // Not this tenant's (another's, or none at all): one answer for both, whatever the route,
      // so a tenant cannot tell another tenant's region from a name nobody uses.
      // A region still loading or failed counts as its tenant's (unknown tenant: admin only).
      const owner =
        registry.find(name)?.tenant ??
        registry.pendingRegion(name)?.tenant ??
        registry.movedRecord(name)?.tenant;
      if (owner !== identity.tenant) throw noSuchRegion(name);
    }
  });

  // A tenant's new region is the tenant's: the body may name it or leave it out, nothing else.
  app.addHook('preHandler', async (request: FastifyRequest) => {
    const tenant = tenantOf(request);
    if (tenant === undefined || routeAccess(request.method, request.routeOptions.url) !== 'region-create')
      return;
    const body = request.body as { tenant?: string };
    if (body.tenant !== undefined && body.tenant !== tenant) {
      throw forbidden(
        auth,
        `a token of tenant ${tenant} may create regions of tenant ${tenant} only, not ${body.tenant}; leave tenant out`,
      );
    }
    body.tenant = tenant;
  });
}
