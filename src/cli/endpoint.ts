import { invalidArgument } from '../errors.js';

/** Parses "HOST:PORT", ":PORT" or "PORT" for --nbd / --http. */
export function parseEndpoint(value: string, defaultHost: string): { host: string; port: number } {
  const match = /^(?:\[?([^\]]*?)\]?:)?(\d+)$/.exec(value.trim());
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw invalidArgument(
      `"${value}" is not HOST:PORT (for example 127.0.0.1:10809, or :0 for any free port)`,
    );
  }
  return { host: match[1] || defaultHost, port };
}
