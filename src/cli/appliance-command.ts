/**
 * `memfabric appliance`: runs one appliance in the foreground, logging structured lines (pino)
 * to stdout, until SIGINT or SIGTERM, when it saves file-backed regions and exits 0.
 */
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { Appliance, DEFAULT_REGION_NAME, HTTP_PORT_DEFAULT, NBD_PORT_DEFAULT } from '../appliance/index.js';
import type { ReadAccess } from '../appliance/auth.js';
import { stateTokenFile } from '../appliance/auth-token.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { formatSize } from '../size.js';
import { parseEndpoint } from './endpoint.js';

export interface ApplianceCommandOptions {
  nbd: string;
  http: string;
  memory: number;
  dataDir?: string;
  defaultRegion: string;
  defaultSize?: number;
  pageSize: number;
  merge: boolean;
  logLevel: string;
  tokenFile?: string;
  tenantTokens?: string;
  httpTlsCert?: string;
  httpTlsKey?: string;
  peerCa?: string;
  readAccess?: string;
}

/**
 * Where the admin token lives: --token-file, else the data directory (the library's default),
 * else a per-user file keyed by the HTTP port, which `memfabric region …` finds by its
 * --appliance URL. With --http :0 and no data directory the token stays in memory.
 */
export function applianceTokenFile(
  options: { tokenFile?: string; dataDir?: string },
  httpPort: number,
): string | undefined {
  if (options.tokenFile) return options.tokenFile;
  if (options.dataDir || httpPort === 0) return undefined;
  return stateTokenFile(httpPort);
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `cannot read ${what} ${file} (${(error as NodeJS.ErrnoException).code ?? 'error'}); give a PEM file`,
      { cause: error },
    );
  }
}

export const applianceDefaults = {
  nbd: `127.0.0.1:${NBD_PORT_DEFAULT}`,
  http: `127.0.0.1:${HTTP_PORT_DEFAULT}`,
  memory: '1GiB',
  defaultRegion: DEFAULT_REGION_NAME,
};

export async function runAppliance(options: ApplianceCommandOptions): Promise<void> {
  const logger = pino({ level: options.logLevel, base: { service: 'memfabric-appliance' } });
  const nbd = parseEndpoint(options.nbd, '127.0.0.1');
  const http = parseEndpoint(options.http, '127.0.0.1');
  if ((options.httpTlsCert === undefined) !== (options.httpTlsKey === undefined)) {
    throw invalidArgument('HTTPS needs both --http-tls-cert and --http-tls-key');
  }
  const readAccess = (options.readAccess ?? 'open') as ReadAccess;
  if (readAccess !== 'open' && readAccess !== 'token') {
    throw invalidArgument(`--read-access must be open or token, not ${JSON.stringify(options.readAccess)}`);
  }
  const tokenFile = applianceTokenFile(options, http.port);
  const appliance = await Appliance.start({
    nbd,
    http,
    memory: options.memory,
    pageSize: options.pageSize,
    ...(options.dataDir ? { dataDir: options.dataDir } : {}),
    defaultRegion:
      options.defaultRegion === ''
        ? false
        : { name: options.defaultRegion, ...(options.defaultSize ? { size: options.defaultSize } : {}) },
    merge: options.merge ? {} : false,
    logger,
    auth: {
      ...(tokenFile !== undefined ? { tokenFile } : {}),
      ...(options.tenantTokens !== undefined ? { tenantTokens: options.tenantTokens } : {}),
      readAccess,
    },
    ...(options.httpTlsCert !== undefined && options.httpTlsKey !== undefined
      ? {
          httpTls: {
            cert: readPem(options.httpTlsCert, 'the certificate'),
            key: readPem(options.httpTlsKey, 'the key'),
          },
        }
      : {}),
    ...(options.peerCa !== undefined ? { peerCa: readPem(options.peerCa, 'the CA file') } : {}),
  });
  const nbdAt = `${appliance.nbdAddress.host}:${appliance.nbdAddress.port}`;
  const httpAt = appliance.httpUrl;
  logger.info(
    {
      nbd: nbdAt,
      http: httpAt,
      memory: options.memory,
      regions: appliance.registry.size,
      tokenFile: appliance.adminTokenFile ?? null,
    },
    'appliance listening',
  );
  const region = appliance.registry.defaultRegion;
  // The human part: where it is and a line to paste.
  process.stderr.write(
    [
      `memfabric appliance: ${formatSize(options.memory)} of memory`,
      `  NBD        nbd://${nbdAt}/${region ?? '<region>'}`,
      `  dashboard  ${httpAt}/`,
      appliance.adminTokenFile
        ? `  token      ${appliance.adminTokenFile} (admin commands: --token-file, or MEMFABRIC_TOKEN)`
        : '  token      in memory only (HTTP port 0 without --data-dir); pass --token-file FILE to keep it',
      `  try        nbdinfo nbd://${nbdAt}/${region ?? ''}`,
      `             qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://${nbdAt}/${region ?? ''}`,
      `  stop       Ctrl-C (or SIGTERM)`,
      ...appliance.warnings.map((warning) => `  WARNING    ${warning}`),
      '',
    ].join('\n'),
  );
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      logger.info({ signal }, 'stopping');
      appliance
        .stop()
        .catch((error: unknown) => logger.error({ err: error }, 'stop failed'))
        .finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
