/**
 * An in-process appliance on free loopback ports, and a small caller for its admin API that
 * returns status, parsed JSON and raw text (so tests can send malformed bodies with `raw`).
 */
import { Appliance } from '../../src/appliance/index.js';

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
  const call = async (method: string, path: string, body?: unknown, raw?: string): Promise<ApiAnswer> => {
    const response = await fetch(base + path, {
      method,
      ...(body !== undefined || raw !== undefined
        ? { headers: { 'content-type': 'application/json' }, body: raw ?? JSON.stringify(body) }
        : {}),
    });
    const text = await response.text();
    return {
      status: response.status,
      json: text && response.headers.get('content-type')?.includes('json') ? JSON.parse(text) : undefined,
      text,
    };
  };
  return { appliance, call };
}
