/**
 * The appliance's admin API (HTTP + JSON, fastify). Bodies are validated against JSON schemas
 * (unknown fields are refused, not dropped); every error answers `{ error: { code, message } }`
 * with a status from one mapping (httpStatusFor). Routes:
 *
 *   POST   /v1/regions              { name, size, readOnly?, tenant?, file?, descriptor? } -> 201 region
 *   GET    /v1/regions                                                         -> { regions }
 *   GET    /v1/regions/:name                                                   -> region
 *   PUT    /v1/regions/:name/descriptor { descriptor }                         -> { generation }
 *   POST   /v1/regions/:name/clone  { name, readOnly? }                        -> 201 region
 *   DELETE /v1/regions/:name                                                   -> 204
 *   POST/GET /v1/names, DELETE /v1/names/:tenant/:name?id=                     (names-routes.ts)
 *   POST/GET /v1/regions/:name/chunks, DELETE …/chunks/:offset                  (chunk-routes.ts)
 *   POST /v1/regions/:name/migrate, GET /v1/regions/:name/migration             (migration-routes.ts)
 *   GET    /v1/stats                                                           -> appliance stats
 *   GET    /metrics                 Prometheus text format
 *   GET    /                        dashboard (HTML; its data: GET /v1/dashboard; dashboard.ts)
 *
 * Who may call which route (tokens, tenants, anonymous reads): auth.ts.
 */
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { Appliance } from './appliance.js';
import { installAuth, tenantOf } from './auth.js';
import { registerChunkRoutes } from './chunk-routes.js';
import { dashboardLoginPage, registerDashboardRoutes } from './dashboard.js';
import { installRequestLog } from './request-log.js';
import { createMetrics } from './metrics.js';
import { registerMigrationRoutes } from './migration-routes.js';
import { registerNameRoutes } from './names-routes.js';
import type { Region, RegionStats } from './region.js';
import { describeValidation } from './validation-message.js';
import { formatSize } from '../size.js';
import type { PendingRegion } from './registry.js';

/** Admin request bodies are small; anything larger is refused with 413. */
export const ADMIN_BODY_BYTES_MAX = 64 * 1024;

const sizeSchema = {
  anyOf: [
    { type: 'integer', minimum: 1 },
    { type: 'string', minLength: 1, maxLength: 32 },
  ],
};
const nameSchema = { type: 'string', minLength: 1, maxLength: 128 };

const createRegionBody = {
  type: 'object',
  required: ['name', 'size'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    size: sizeSchema,
    readOnly: { type: 'boolean' },
    tenant: { type: 'string', minLength: 1, maxLength: 64 },
    file: { type: 'boolean' },
    // Opaque to the appliance but for `generation` (checked by registry.create).
    descriptor: { type: 'object' },
  },
} as const;

const putDescriptorBody = {
  type: 'object',
  required: ['descriptor'],
  additionalProperties: false,
  properties: { descriptor: { type: 'object' } },
} as const;

const cloneRegionBody = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: { name: nameSchema, readOnly: { type: 'boolean' } },
} as const;

interface CreateRegionBody {
  name: string;
  size: number | string;
  readOnly?: boolean;
  tenant?: string;
  file?: boolean;
  descriptor?: Record<string, unknown>;
}

/** The one mapping from error codes to HTTP statuses. */
export function httpStatusFor(error: unknown): number {
  if (error instanceof MemfabricError) {
    switch (error.code) {
      case ErrorCodes.INVALID_ARGUMENT:
      case ErrorCodes.INVALID_SIZE:
      case ErrorCodes.OUT_OF_RANGE:
      case ErrorCodes.FILE_REFUSED:
        return 400;
      case ErrorCodes.LOADING:
        return 503;
      case ErrorCodes.UNAUTHORIZED:
        return 401;
      case ErrorCodes.FORBIDDEN:
        return 403;
      case ErrorCodes.NOT_FOUND:
        return 404;
      case ErrorCodes.ALREADY_EXISTS:
      case ErrorCodes.BUSY:
      case ErrorCodes.READ_ONLY:
      case ErrorCodes.CONFLICT:
      case ErrorCodes.MIGRATING:
      case ErrorCodes.REGION_FAILED:
      case ErrorCodes.STALE_GENERATION:
        return 409;
      case ErrorCodes.POOL_EXHAUSTED:
      case ErrorCodes.CHUNKS_EXHAUSTED:
        return 507;
      default:
        return 500;
    }
  }
  const status = (error as FastifyError).statusCode;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

export function regionView(region: Region): Record<string, unknown> {
  return { ...region.info(), stats: region.stats() };
}

const NO_STATS: RegionStats = {
  reads: 0,
  writes: 0,
  trims: 0,
  zeroes: 0,
  flushes: 0,
  bytesRead: 0,
  bytesWritten: 0,
  residentBytes: 0,
  sharedBytes: 0,
  zeroBytes: 0,
  connections: 0,
};

/** A file-backed region that is loading or failed to load, shaped like a region. */
export function pendingView(region: PendingRegion): Record<string, unknown> {
  return {
    name: region.name,
    size: region.size,
    readOnly: region.readOnly,
    tenant: region.tenant,
    file: region.file,
    clonedFrom: null,
    createdAt: null,
    state: region.state,
    error: region.error,
    load: null,
    connections: 0,
    ...(region.descriptor !== undefined ? { descriptor: region.descriptor } : {}),
    stats: NO_STATS,
  };
}

export function createAdminApi(
  appliance: Appliance,
  tls?: { cert: string | Buffer; key: string | Buffer },
): FastifyInstance {
  const app = Fastify({
    ...(tls ? { https: { cert: tls.cert, key: tls.key } } : {}),
    logger: false,
    bodyLimit: ADMIN_BODY_BYTES_MAX,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  const registry = appliance.registry;
  const metrics = createMetrics(appliance);
  installAuth(app, appliance.adminAuth, registry);
  installRequestLog(app, appliance, metrics);

  app.setErrorHandler((error: FastifyError | MemfabricError, request, reply) => {
    const status = httpStatusFor(error);
    const code =
      error instanceof MemfabricError
        ? error.code
        : status === 400 || status === 413 || status === 415
          ? ErrorCodes.BAD_REQUEST
          : status === 404
            ? ErrorCodes.NOT_FOUND
            : ErrorCodes.INTERNAL;
    const validation = (error as FastifyError).validation;
    const message =
      validation !== undefined
        ? describeValidation(
            validation,
            request.routeOptions.schema?.body as { properties?: Record<string, unknown> },
          )
        : status >= 500 && !(error instanceof MemfabricError)
          ? 'internal error; see the appliance log'
          : error.message;
    if (status >= 500) appliance.logger?.error({ err: error, url: request.url }, 'admin request failed');
    const page = dashboardLoginPage(request, status);
    if (page !== undefined) {
      void reply.status(status).header('content-type', 'text/html; charset=utf-8').send(page);
      return;
    }
    void reply.status(status).send({ error: { code, message } });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({
      error: { code: ErrorCodes.NOT_FOUND, message: `no route ${request.method} ${request.url}; see GET /` },
    });
  });

  app.post<{ Body: CreateRegionBody }>(
    '/v1/regions',
    { schema: { body: createRegionBody } },
    async (request, reply) => {
      const body = request.body;
      const region = await registry.create({
        name: body.name,
        size: body.size,
        ...(body.readOnly !== undefined ? { readOnly: body.readOnly } : {}),
        ...(body.tenant !== undefined ? { tenant: body.tenant } : {}),
        ...(body.file !== undefined ? { file: body.file } : {}),
        ...(body.descriptor !== undefined ? { descriptor: body.descriptor } : {}),
      });
      appliance.logger?.info(
        { region: region.name, size: region.size, tenant: region.tenant },
        'region created',
      );
      const warnings = overcommitWarnings(
        region.name,
        region.size,
        appliance.pool.capacity * appliance.pool.pageSize,
      );
      for (const warning of warnings) appliance.logger?.warn({ region: region.name }, warning);
      return reply.status(201).send({ ...regionView(region), ...(warnings.length > 0 ? { warnings } : {}) });
    },
  );

  // A tenant sees its own regions only (auth.ts hides the others everywhere else).
  app.get('/v1/regions', async (request) => {
    const tenant = tenantOf(request);
    const mine = (region: { tenant: string | null }): boolean =>
      tenant === undefined || region.tenant === tenant;
    return {
      regions: [
        ...registry.all().filter(mine).map(regionView),
        ...registry.pendingRegions().filter(mine).map(pendingView),
      ].sort((a, b) => String(a.name).localeCompare(String(b.name))),
    };
  });

  app.get<{ Params: { name: string } }>('/v1/regions/:name', async (request) => {
    const name = request.params.name;
    const pending = registry.pendingRegion(name);
    return (
      registry.movedRecord(name) ?? (pending ? pendingView(pending) : regionView(registry.require(name)))
    );
  });

  app.put<{ Params: { name: string }; Body: { descriptor: Record<string, unknown> } }>(
    '/v1/regions/:name/descriptor',
    { schema: { body: putDescriptorBody } },
    async (request) => ({
      generation: await registry.putDescriptor(request.params.name, request.body.descriptor),
    }),
  );

  app.post<{ Params: { name: string }; Body: { name: string; readOnly?: boolean } }>(
    '/v1/regions/:name/clone',
    { schema: { body: cloneRegionBody } },
    async (request, reply) => {
      const clone = registry.clone(request.params.name, {
        name: request.body.name,
        ...(request.body.readOnly !== undefined ? { readOnly: request.body.readOnly } : {}),
      });
      appliance.logger?.info({ region: clone.name, from: request.params.name }, 'region cloned');
      return reply.status(201).send(regionView(clone));
    },
  );

  app.delete<{ Params: { name: string } }>('/v1/regions/:name', async (request, reply) => {
    await registry.delete(request.params.name);
    appliance.logger?.info({ region: request.params.name }, 'region deleted');
    return reply.status(204).send();
  });

  registerChunkRoutes(app, appliance);
  registerMigrationRoutes(app, appliance, metrics);
  registerNameRoutes(app, appliance);

  // A tenant gets what a client needs to place and reach regions (memory, endpoints), not the
  // appliance's counters, which sum every tenant's activity.
  app.get('/v1/stats', async (request) => {
    const stats = appliance.stats();
    const endpoints = { nbd: appliance.nbdAddress, http: appliance.httpAddress };
    const tenant = tenantOf(request);
    if (tenant === undefined) return { ...stats, endpoints };
    const regions = registry.all().filter((region) => region.tenant === tenant).length;
    return { tenant, memory: stats.memory, regions, endpoints };
  });

  app.get('/metrics', async (_request, reply) => {
    const body = await metrics.metrics();
    return reply.header('content-type', metrics.contentType).send(body);
  });

  registerDashboardRoutes(app, appliance);

  return app;
}

/**
 * Regions are thin (memory is taken as pages are written), so a region larger than the
 * appliance is allowed; but its writes fail with ENOSPC once the appliance is full, which a
 * user who typed 1TiB for 1GiB deserves to hear at creation rather than at the first ENOSPC.
 */
export function overcommitWarnings(name: string, size: number, memoryBytes: number): string[] {
  if (size <= memoryBytes) return [];
  return [
    `region ${name} (${formatSize(size)}) is larger than this appliance's memory (${formatSize(memoryBytes)}): ` +
      `regions are thin, but writes fail with ENOSPC once ${formatSize(memoryBytes)} of data is held; ` +
      'give the appliance more --memory, or place large regions with the fabric',
  ];
}
