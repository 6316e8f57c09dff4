/**
 * An in-process appliance on free loopback ports, and a small caller for its admin API that
 * returns status, parsed JSON and raw text (so tests can send malformed bodies with `raw`).
 * `call` sends the appliance's admin token; `callAs(token, …)` sends another one (or none).
 * TEST_TOKEN is one admin token for tests that start several appliances and talk to all of
 * them (pass `auth: testAuth` to Appliance.start, `token: TEST_TOKEN` to clients).
 */
import { Appliance } from '../../src/appliance/index.js';
import { generateToken } from '../../src/appliance/auth-token.js';

export const TEST_TOKEN = generateToken();
export const testAuth = { token: TEST_TOKEN };

/** The Authorization header for a token. */
export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}

export interface ApiAnswer {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read whatever JSON came back
  json: any;
  text: string;
}

export async function startAppliance(options: Parameters<typeof Appliance.start>[0] = {}) {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    ...options,
  });
  const base = `http://127.0.0.1:${appliance.httpAddress.port}`;
  const callAs = async (
    token: string | undefined,
    method: string,
    path: string,
    body?: unknown,
    raw?: string,
  ): Promise<ApiAnswer> => {
    const response = await fetch(base + path, {
      method,
      headers: {
        ...(body !== undefined || raw !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(token !== undefined ? bearer(token) : {}),
      },
      ...(body !== undefined || raw !== undefined ? { body: raw ?? JSON.stringify(body) } : {}),
    });
    const text = await response.text();
    return {
      status: response.status,
      json: text && response.headers.get('content-type')?.includes('json') ? JSON.parse(text) : undefined,
      text,
    };
  };
  const call = (method: string, path: string, body?: unknown, raw?: string): Promise<ApiAnswer> =>
    callAs(appliance.adminToken, method, path, body, raw);
  return { appliance, call, callAs, base };
}
