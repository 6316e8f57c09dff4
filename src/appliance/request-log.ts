/**
 * One log line and one latency observation per admin API request, when its response has been
 * sent: method, route pattern (never the raw URL: no query strings, bounded label values),
 * status, milliseconds, and who asked (admin, tenant T, anonymous). Headers are never logged,
 * so neither is a token.
 *
 * Level: info for API calls, which are rare and deliberate (an operator or a client creating,
 * deleting, migrating, listing); debug for what machines poll every second or so (Prometheus'
 * GET /metrics, the dashboard's page, assets and GET /v1/dashboard), which would otherwise
 * bury the calls that matter. 5xx answers are logged at error by the error handler as well.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Appliance } from './appliance.js';
import type { ApplianceMetrics } from './metrics.js';

/** Routes polled by machines: their request lines are debug. */
const POLLED_ROUTES = new Set(['GET /metrics', 'GET /', 'GET /v1/dashboard', 'GET /dashboard/:asset']);

/** Who made a request, for the log (never the token). */
function caller(request: FastifyRequest): string {
  const identity = request.identity as FastifyRequest['identity'] | null;
  if (!identity) return 'unidentified';
  return identity.kind === 'tenant' ? `tenant ${identity.tenant}` : identity.kind;
}

export function installRequestLog(
  app: FastifyInstance,
  appliance: Appliance,
  metrics: ApplianceMetrics,
): void {
  app.addHook('onResponse', async (request, reply) => {
    const method = request.method === 'HEAD' ? 'GET' : request.method;
    // Unknown routes share one label value, so a scanner cannot grow the metric without bound.
    const route = request.routeOptions.url ?? 'unmatched';
    const status = reply.statusCode;
    const ms = reply.elapsedTime;
    metrics.observeHttp(method, route, status, ms / 1000);
    const logger = appliance.logger;
    if (!logger) return;
    const fields = {
      component: 'http',
      method: request.method,
      route,
      status,
      ms: Math.round(ms * 1000) / 1000,
      caller: caller(request),
    };
    const message = `admin ${request.method} ${route} ${status}`;
    if (POLLED_ROUTES.has(`${method} ${route}`)) logger.debug(fields, message);
    else logger.info(fields, message);
  });
}
