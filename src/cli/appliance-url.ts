/**
 * How the CLI reads an appliance's admin URL: `http://HOST:PORT`, `https://…`, or a bare
 * `HOST:PORT` (taken as http, the appliance's default), from --appliance or MEMFABRIC_APPLIANCE.
 * A bare address used to be taken as a URL whose scheme was the host, and the appliance was then
 * reported unreachable; now it either works or says how to write it.
 */
import { InvalidArgumentError } from 'commander';

export const APPLIANCE_URL_BUILT_IN = 'http://127.0.0.1:10880';

/** The default --appliance: MEMFABRIC_APPLIANCE when set, else the built-in default. */
export function applianceUrlDefault(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.MEMFABRIC_APPLIANCE?.trim();
  return fromEnv ? normalizeApplianceUrl(fromEnv, 'MEMFABRIC_APPLIANCE') : APPLIANCE_URL_BUILT_IN;
}

/** An admin URL with its scheme; throws commander's InvalidArgumentError naming the source. */
export function normalizeApplianceUrl(value: string, source = '--appliance'): string {
  const text = value.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new InvalidArgumentError(
      `${source} "${value}" is not an admin URL: write http://HOST:PORT (or HOST:PORT)`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError(`${source} "${value}" must be an http:// or https:// URL`);
  }
  if (url.port === '' && !/:\d+$/.test(url.host)) {
    // Without a port, http means 80: almost never an appliance. Say so rather than time out there.
    throw new InvalidArgumentError(
      `${source} "${value}" has no port: the appliance's admin API listens on 10880 unless told otherwise (http://HOST:10880)`,
    );
  }
  return withScheme.replace(/\/+$/, '');
}

/** The parser for --appliance. */
export function applianceUrlOption(value: string): string {
  return normalizeApplianceUrl(value);
}
