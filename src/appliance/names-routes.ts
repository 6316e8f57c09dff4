/**
 * The names table on the admin API (the table and its guarantees: names.ts). Routes:
 *
 *   POST   /v1/names                  { name, tenant?, id } -> 201 record (claimed) | 200 record
 *          (already held by this id); 409 MF_ALREADY_EXISTS when another id holds it
 *   DELETE /v1/names/:tenant/:name?id=ID                    -> 204 (released, or held by nobody);
 *          409 MF_CONFLICT when another id holds it
 *   GET    /v1/names                                        -> { names: [record, ...] }
 *
 * A record is { name, tenant, id, createdAt }. A tenant token claims, releases and lists its
 * own tenant's names only (naming another tenant is 403); `tenant` left out means the token's
 * tenant, or `default` for the admin.
 */
import type { FastifyInstance } from 'fastify';
import type { Appliance } from './appliance.js';
import { forbidden, tenantOf } from './auth.js';
import { DEFAULT_TENANT } from './registry.js';

const claimBody = {
  type: 'object',
  required: ['name', 'id'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 200 },
    tenant: { type: 'string', minLength: 1, maxLength: 64 },
    id: { type: 'string', minLength: 1, maxLength: 128 },
  },
} as const;

const releaseQuery = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;

export function registerNameRoutes(app: FastifyInstance, appliance: Appliance): void {
  const names = appliance.names;
  const auth = appliance.adminAuth;

  /** The tenant a request acts for: the one named, which a tenant token must match. */
  const actingTenant = (caller: string | undefined, named: string | undefined, what: string): string => {
    if (caller === undefined) return named ?? DEFAULT_TENANT;
    if (named !== undefined && named !== caller) {
      throw forbidden(
        auth,
        `a token of tenant ${caller} may ${what} names of tenant ${caller} only, not ${named}`,
      );
    }
    return caller;
  };

  app.post<{ Body: { name: string; tenant?: string; id: string } }>(
    '/v1/names',
    { schema: { body: claimBody } },
    async (request, reply) => {
      const body = request.body;
      const tenant = actingTenant(tenantOf(request), body.tenant, 'claim');
      const { record, created } = await names.claim({ name: body.name, tenant, id: body.id });
      if (created) appliance.logger?.info({ name: record.name, tenant, id: record.id }, 'name claimed');
      return reply.status(created ? 201 : 200).send(record);
    },
  );

  app.delete<{ Params: { tenant: string; name: string }; Querystring: { id: string } }>(
    '/v1/names/:tenant/:name',
    { schema: { querystring: releaseQuery } },
    async (request, reply) => {
      const tenant = actingTenant(tenantOf(request), request.params.tenant, 'release');
      await names.release(tenant, request.params.name, request.query.id);
      return reply.status(204).send();
    },
  );

  app.get('/v1/names', async (request) => ({ names: names.list(tenantOf(request)) }));
}
