/**
 * `memfabric appliance`: runs one appliance in the foreground, logging structured lines (pino)
 * to stdout, until SIGINT or SIGTERM, when it saves file-backed regions and exits 0 — or 1 when
 * a final save failed, naming each region not saved (log line and stderr).
 */
import { byteProgress, progressWanted, type ProgressBar } from './progress.js';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { Appliance, DEFAULT_REGION_NAME, HTTP_PORT_DEFAULT, NBD_PORT_DEFAULT } from '../appliance/index.js';
import type { NbdLimits, NbdTlsMode } from '../nbd/index.js';
import type { ReadAccess } from '../appliance/auth.js';
import { stateTokenFile } from '../appliance/auth-token.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { checkCpuShare } from '../memory/index.js';
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
  /** --merge-cpu as typed: the merger's share of one core (checked here, typed error if bad). */
  mergeCpu?: string;
  logLevel: string;
  /** NBD resource bounds from the --nbd-* flags (timeouts in seconds, as typed). */
  nbdMaxConnections?: number;
  nbdBufferBudget?: number;
  nbdHandshakeTimeout?: number;
  nbdIdleTimeout?: number;
  nbdStallTimeout?: number;
  /** NBD TLS: off | on | require, with the qemu-nbd/nbdkit file options. */
  tls?: NbdTlsMode;
  tlsCertificates?: string;
  tlsPsk?: string;
  tlsVerifyPeer?: boolean;
  tlsAdmin?: string[];
  tokenFile?: string;
  tenantTokens?: string;
  httpTlsCert?: string;
  httpTlsKey?: string;
  peerCa?: string;
  readAccess?: string;
  /** Fleet mode: etcd client URLs, comma-separated, and the registration's lease TTL (s). */
  etcd?: string;
  etcdTtl?: number;
  /** false with --no-controller: no fleet controller candidate in this appliance. */
  controller?: boolean;
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

/** `--etcd URL[,URL...]` as a list (checked by the registration: http(s)://HOST:PORT each). */
function etcdEndpoints(value: string): string[] {
  return value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
}

/** Exit status when the final save of some file-backed region failed (or stopping failed). */
export const EXIT_NOT_SAVED = 1;

export const applianceDefaults = {
  nbd: `127.0.0.1:${NBD_PORT_DEFAULT}`,
  http: `127.0.0.1:${HTTP_PORT_DEFAULT}`,
  memory: '1GiB',
  defaultRegion: DEFAULT_REGION_NAME,
};

/** The NBD limits the flags set; absent flags keep the server's defaults. */
function nbdLimits(options: ApplianceCommandOptions): NbdLimits {
  const ms = (seconds: number | undefined) =>
    seconds === undefined ? undefined : Math.round(seconds * 1000);
  const limits: NbdLimits = {};
  if (options.nbdMaxConnections !== undefined) limits.maxConnections = options.nbdMaxConnections;
  if (options.nbdBufferBudget !== undefined) limits.bufferBytesMax = options.nbdBufferBudget;
  if (options.nbdHandshakeTimeout !== undefined) limits.handshakeTimeoutMs = ms(options.nbdHandshakeTimeout);
  if (options.nbdIdleTimeout !== undefined) limits.idleTimeoutMs = ms(options.nbdIdleTimeout);
  if (options.nbdStallTimeout !== undefined) limits.stallTimeoutMs = ms(options.nbdStallTimeout);
  return limits;
}

/** `--merge-cpu SHARE` as a number, or a typed error that shows the value as typed. */
function mergeCpuShare(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const share = Number(value);
  return checkCpuShare(value.trim() === '' || Number.isNaN(share) ? value : share, '--merge-cpu');
}

export async function runAppliance(options: ApplianceCommandOptions): Promise<void> {
  const logger = pino({ level: options.logLevel, base: { service: 'memfabric-appliance' } });
  const nbd = parseEndpoint(options.nbd, '127.0.0.1');
  const http = parseEndpoint(options.http, '127.0.0.1');
  // Credentials without a mode mean TLS is wanted, as with qemu-nbd --tls-creds: require it.
  const tlsMode = options.tls ?? (options.tlsCertificates || options.tlsPsk ? 'require' : undefined);
  if ((options.httpTlsCert === undefined) !== (options.httpTlsKey === undefined)) {
    throw invalidArgument('HTTPS needs both --http-tls-cert and --http-tls-key');
  }
  const readAccess = (options.readAccess ?? 'open') as ReadAccess;
  if (readAccess !== 'open' && readAccess !== 'token') {
    throw invalidArgument(`--read-access must be open or token, not ${JSON.stringify(options.readAccess)}`);
  }
  const tokenFile = applianceTokenFile(options, http.port);
  const mergeCpu = mergeCpuShare(options.mergeCpu);
  // File-backed regions load after the listeners are up: a bar on a terminal while they do.
  let loadBar: ProgressBar | undefined;
  const onLoadProgress = progressWanted()
    ? (done: number, total: number) => {
        loadBar ??= byteProgress('loading regions', total);
        loadBar.update(done, total);
      }
    : undefined;
  const starting = Appliance.start({
    nbd,
    http,
    ...(onLoadProgress ? { onLoadProgress } : {}),
    memory: options.memory,
    pageSize: options.pageSize,
    ...(options.dataDir ? { dataDir: options.dataDir } : {}),
    defaultRegion:
      options.defaultRegion === ''
        ? false
        : { name: options.defaultRegion, ...(options.defaultSize ? { size: options.defaultSize } : {}) },
    merge: options.merge ? (mergeCpu !== undefined ? { cpuShare: mergeCpu } : {}) : false,
    nbdLimits: nbdLimits(options),
    ...(tlsMode !== undefined
      ? {
          tls: {
            mode: tlsMode,
            ...(options.tlsCertificates ? { certificates: options.tlsCertificates } : {}),
            ...(options.tlsPsk ? { psk: options.tlsPsk } : {}),
            ...(options.tlsVerifyPeer ? { verifyClientCertificates: true } : {}),
            ...(options.tlsAdmin ? { adminIdentities: options.tlsAdmin } : {}),
          },
        }
      : {}),
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
    ...(options.etcd !== undefined ? { etcd: etcdEndpoints(options.etcd) } : {}),
    ...(options.etcdTtl !== undefined ? { etcdTtl: options.etcdTtl } : {}),
    ...(options.controller === false ? { controller: false } : {}),
  });
  // A refused start is an error-level log line (for whoever collects the logs) as well as the
  // one-line message main.ts prints for the person at the terminal.
  const appliance = await starting.catch((error: unknown) => {
    const code = error instanceof MemfabricError ? error.code : undefined;
    logger.error({ error: { code, message: (error as Error).message } }, 'appliance failed to start');
    throw error;
  });
  void appliance.loaded.then(() => loadBar?.stop());
  const nbdAt = `${appliance.nbdAddress.host}:${appliance.nbdAddress.port}`;
  const httpAt = appliance.httpUrl;
  logger.info(
    {
      nbd: nbdAt,
      http: httpAt,
      memory: options.memory,
      regions: appliance.registry.size,
      tokenFile: appliance.adminTokenFile ?? null,
      ...(appliance.registration ? { etcdKey: appliance.registration.key } : {}),
      ...(appliance.controller ? { controller: appliance.controller.id } : {}),
      nbdLimits: appliance.nbdServer.effectiveLimits,
    },
    'appliance listening',
  );
  const region = appliance.registry.defaultRegion;
  const tls = tlsMode !== undefined && tlsMode !== 'off';
  const scheme = tls ? 'nbds' : 'nbd';
  const query = tls && options.tlsPsk ? `?tls-psk-file=${options.tlsPsk}` : '';
  // The human part: where it is and a line to paste.
  process.stderr.write(
    [
      `memfabric appliance: ${formatSize(options.memory)} of memory`,
      `  NBD        ${scheme}://${nbdAt}/${region ?? '<region>'}${tls ? ` (TLS ${tlsMode})` : ''}`,
      `  dashboard  ${httpAt}/`,
      appliance.adminTokenFile
        ? `  token      ${appliance.adminTokenFile} (admin commands: --token-file, or MEMFABRIC_TOKEN)`
        : '  token      in memory only (HTTP port 0 without --data-dir); pass --token-file FILE to keep it',
      `  try        nbdinfo '${scheme}://${tls && options.tlsPsk ? 'TENANT@' : ''}${nbdAt}/${region ?? ''}${query}'`,
      ...(tls
        ? []
        : [
            `             qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://${nbdAt}/${region ?? ''}`,
          ]),
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
        .then(({ unsaved }) => {
          if (unsaved.length === 0) return;
          process.exitCode = EXIT_NOT_SAVED;
          for (const { name, error } of unsaved) {
            process.stderr.write(
              `memfabric appliance: region ${name} was NOT saved: ${(error as Error)?.message ?? String(error)}\n`,
            );
          }
        })
        .catch((error: unknown) => {
          process.exitCode = EXIT_NOT_SAVED;
          logger.error({ err: error }, 'stop failed');
        })
        .finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
