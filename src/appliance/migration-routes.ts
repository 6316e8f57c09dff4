/**
 * Region migration on the admin API (the algorithm and its guarantees: migration.ts). Routes:
 *
 *   POST /v1/regions/:name/migrate    { target, targetName?, targetToken?, maxRounds?, maxDowntimeMs?,
 *                                       autoConverge? (false only) }
 *          -> 202 the migration's status; 404 unknown region, 400 bad target URL,
 *             409 already migrating (MF_MIGRATING) or read-only (MF_READ_ONLY)
 *   GET  /v1/regions/:name/migration  -> the latest migration's status; 404 if none
 *
 * Status `state`: preparing, copying (round, pagesCopied, dirtyRemaining, and the engine's
 * progress: dirty rate, bandwidth, expected downtime), blackout, done (movedTo: { appliance,
 * region, nbd: { host, port } }, blackout: { pages, ms }, stopReason), or aborting then failed
 * (error: { code, message }; the region stays here, the target's partial region is deleted).
 *
 * The manager lives as long as this API: closing the API (appliance.stop()) fails the
 * migrations under way, which leaves their regions here, before the regions are saved.
 */
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import type { Appliance } from './appliance.js';
import { registerMigrationMetrics } from './metrics.js';
import { MAX_DOWNTIME_MAX_MS, MAX_ROUNDS_MAX, MigrationManager, type MigrateOptions } from './migration.js';

const migrateBody = {
  type: 'object',
  required: ['target'],
  additionalProperties: false,
  properties: {
    target: { type: 'string', minLength: 1, maxLength: 2048 },
    targetName: { type: 'string', minLength: 1, maxLength: 128 },
    targetToken: { type: 'string', minLength: 1, maxLength: 512 },
    maxRounds: { type: 'integer', minimum: 1, maximum: MAX_ROUNDS_MAX },
    maxDowntimeMs: { type: 'number', minimum: 0, maximum: MAX_DOWNTIME_MAX_MS },
    autoConverge: { type: 'boolean' },
  },
} as const;

export function registerMigrationRoutes(
  app: FastifyInstance,
  appliance: Appliance,
  metrics?: Registry,
): void {
  const migrations = new MigrationManager(appliance);
  if (metrics) registerMigrationMetrics(metrics, () => migrations.totals());
  app.addHook('onClose', () => migrations.close());

  app.post<{ Params: { name: string }; Body: MigrateOptions }>(
    '/v1/regions/:name/migrate',
    { schema: { body: migrateBody } },
    async (request, reply) => reply.status(202).send(migrations.start(request.params.name, request.body)),
  );

  app.get<{ Params: { name: string } }>('/v1/regions/:name/migration', async (request) =>
    migrations.status(request.params.name),
  );
}
