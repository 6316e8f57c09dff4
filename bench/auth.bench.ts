/**
 * What authentication costs on the admin API:
 *
 *   token check with 1024 tenant tokens   AdminAuth.identify() calls per second, beside the same
 *                                         check with the admin token alone (it compares the
 *                                         digest with every token, so it grows with tenants)
 *   authenticated admin call              adminRequest GET /v1/regions/:name with the admin
 *                                         token, beside the same call without a token (a
 *                                         loopback read), both over HTTP on one appliance
 *   HTTPS admin call                      the same call with a token over HTTPS (a TLS handshake
 *                                         per call: the admin client opens a connection per
 *                                         call), beside it over HTTP
 *
 * In-process appliances on loopback; the certificate is made with the openssl CLI (the HTTPS
 * figure is skipped, saying why, without it). Calls run one at a time, interleaved with their
 * baseline.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { adminRequest, type AdminTarget } from '../src/appliance/admin-client.js';
import { AdminAuth } from '../src/appliance/auth.js';
import { generateToken } from '../src/appliance/auth-token.js';
import { Appliance } from '../src/appliance/index.js';
import { missing } from '../test/interop/appliance-process.js';
import { makeSelfSigned } from '../test/nbd/tls-credentials.js';
import { interleaved, interleavedAsync, median, type BenchContext, type Suite } from './harness.js';

const TENANTS = 1024;

function identifyRate(auth: AdminAuth, header: string, calls: number): number {
  const started = performance.now();
  for (let i = 0; i < calls; i++) auth.identify(header);
  return calls / ((performance.now() - started) / 1000);
}

/** Median milliseconds of `calls` sequential calls. */
async function callMs(target: string | AdminTarget, path: string, calls: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < calls; i++) {
    const started = performance.now();
    await adminRequest(target, 'GET', path);
    times.push(performance.now() - started);
  }
  return median(times);
}

export const authSuite: Suite = {
  name: 'auth',
  async run(context: BenchContext): Promise<void> {
    const adminToken = generateToken();
    const tenants = new Map(Array.from({ length: TENANTS }, (_, i) => [`t${i}`, generateToken()] as const));
    const many = new AdminAuth({ adminToken, tenantTokens: tenants });
    const alone = new AdminAuth({ adminToken });
    const header = `Bearer ${tenants.get(`t${TENANTS - 1}`)!}`;
    const checks = context.quick ? 20_000 : 100_000;
    const [withTenants, adminOnly] = interleaved(
      context.repeats,
      () => identifyRate(many, header, checks),
      () => identifyRate(alone, `Bearer ${adminToken}`, checks),
    );
    context.record({
      id: `auth: token check with ${TENANTS} tenant tokens`,
      unit: 'checks/s',
      value: withTenants,
      baseline: 'the admin token alone',
      baselineValue: adminOnly,
      higherIsBetter: true,
    });

    const calls = context.quick ? 20 : 100;
    const plain = await Appliance.start({
      memory: '16MiB',
      nbd: { port: 0 },
      http: { port: 0 },
      merge: false,
    });
    try {
      const path = '/v1/regions/default';
      const [tokened, anonymous] = await interleavedAsync(
        context.repeats,
        () => callMs({ url: plain.httpUrl, token: plain.adminToken }, path, calls),
        () => callMs(plain.httpUrl, path, calls),
      );
      context.record({
        id: 'auth: admin call with a token (HTTP)',
        unit: 'ms',
        value: tokened,
        baseline: 'the same call without a token',
        baselineValue: anonymous,
        higherIsBetter: false,
      });

      const openssl = missing('openssl');
      if (openssl) {
        context.log(`HTTPS figure skipped: ${openssl}`);
        return;
      }
      const dir = mkdtempSync(join(tmpdir(), 'memfabric-bench-tls-'));
      try {
        makeSelfSigned(dir, 'bench', 'IP:127.0.0.1');
        const cert = readFileSync(join(dir, 'cert.pem'));
        const secure = await Appliance.start({
          memory: '16MiB',
          nbd: { port: 0 },
          http: { port: 0 },
          merge: false,
          auth: { token: plain.adminToken },
          httpTls: { cert, key: readFileSync(join(dir, 'key.pem')) },
        });
        try {
          const [https, http] = await interleavedAsync(
            context.repeats,
            () => callMs({ url: secure.httpUrl, token: secure.adminToken, ca: cert }, path, calls),
            () => callMs({ url: plain.httpUrl, token: plain.adminToken }, path, calls),
          );
          context.record({
            id: 'auth: admin call with a token over HTTPS',
            unit: 'ms',
            value: https,
            baseline: 'the same call over HTTP',
            baselineValue: http,
            higherIsBetter: false,
          });
        } finally {
          await secure.stop();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      await plain.stop();
    }
  },
};
