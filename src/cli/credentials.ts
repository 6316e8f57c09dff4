/**
 * How the CLI's admin commands find the token (and CA) for an appliance. The first that gives
 * a token wins:
 *
 *   1. --token TOKEN                (visible to other users in `ps`: prefer 2 or 3)
 *   2. MEMFABRIC_TOKEN
 *   3. --token-file FILE
 *   4. MEMFABRIC_TOKEN_FILE
 *   5. <stateDir>/admin-<port>.token for the port of --appliance, if that file exists (where
 *      `memfabric appliance` keeps the token when it runs without a data directory)
 * and with none the request goes without a token (reads from this machine may still work).
 * An appliance with a data directory keeps its token in <dataDir>/admin.token: pass that file
 * with --token-file. The CA for an https appliance: --ca FILE, else MEMFABRIC_CA (a file).
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { AdminTarget } from '../appliance/admin-client.js';
import { readTokenFile, stateTokenFile, checkToken } from '../appliance/auth-token.js';
import { ErrorCodes, MemfabricError } from '../errors.js';

/** The options every admin command has (added by withCredentials). */
export interface CredentialOptions {
  appliance: string;
  token?: string;
  tokenFile?: string;
  ca?: string;
}

/** Adds --token, --token-file and --ca to an admin command. */
export function withCredentials(command: Command): Command {
  return command
    .option('--token <token>', 'admin or tenant token (default: MEMFABRIC_TOKEN, then the token file)')
    .option(
      '--token-file <file>',
      'file holding the token (an appliance with --data-dir DIR keeps it in DIR/admin.token)',
    )
    .option('--ca <file>', 'CA certificate(s) to trust for an https:// appliance (default: MEMFABRIC_CA)');
}

/** The appliance's URL with the token and CA the options and environment give. */
export async function adminTargetFor(
  options: CredentialOptions,
  env: NodeJS.ProcessEnv = process.env,
): Promise<AdminTarget> {
  const token = await findToken(options.appliance, options, env);
  const caFile = options.ca ?? env.MEMFABRIC_CA;
  const ca = caFile === undefined ? undefined : readCa(caFile);
  return { url: options.appliance, ...(token !== undefined ? { token } : {}), ...(ca ? { ca } : {}) };
}

/** The token for `url` by the lookup order above, or undefined. */
export async function findToken(
  url: string,
  options: { token?: string; tokenFile?: string },
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | undefined> {
  if (options.token !== undefined) return checkToken(options.token, '--token');
  if (env.MEMFABRIC_TOKEN) return checkToken(env.MEMFABRIC_TOKEN, 'MEMFABRIC_TOKEN');
  const file = options.tokenFile ?? (env.MEMFABRIC_TOKEN_FILE || undefined);
  if (file !== undefined) {
    const read = await readTokenFile(file);
    if (!read) {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `the token file ${file} does not exist; the appliance creates it at start (in its data directory: DIR/admin.token)`,
      );
    }
    return read.token;
  }
  const port = portOf(url);
  if (port === undefined) return undefined;
  return (await readTokenFile(stateTokenFile(port, env)))?.token;
}

function portOf(url: string): number | undefined {
  try {
    const parsed = new URL(url);
    if (parsed.port !== '') return Number(parsed.port);
    return parsed.protocol === 'https:' ? 443 : parsed.protocol === 'http:' ? 80 : undefined;
  } catch {
    return undefined;
  }
}

function readCa(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `cannot read the CA file ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'}); give a PEM file of the appliance's CA`,
      { cause: error },
    );
  }
}
