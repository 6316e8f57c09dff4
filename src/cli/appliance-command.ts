/**
 * `memfabric appliance`: runs one appliance in the foreground, logging structured lines (pino)
 * to stdout, until SIGINT or SIGTERM, when it saves file-backed regions and exits 0.
 */
import pino from 'pino';
import { Appliance, DEFAULT_REGION_NAME, HTTP_PORT_DEFAULT, NBD_PORT_DEFAULT } from '../appliance/index.js';
import type { NbdLimits } from '../nbd/index.js';
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
  /** NBD resource bounds from the --nbd-* flags (timeouts in seconds, as typed). */
  nbdMaxConnections?: number;
  nbdBufferBudget?: number;
  nbdHandshakeTimeout?: number;
  nbdIdleTimeout?: number;
  nbdStallTimeout?: number;
}

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

export async function runAppliance(options: ApplianceCommandOptions): Promise<void> {
  const logger = pino({ level: options.logLevel, base: { service: 'memfabric-appliance' } });
  const nbd = parseEndpoint(options.nbd, '127.0.0.1');
  const http = parseEndpoint(options.http, '127.0.0.1');
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
    nbdLimits: nbdLimits(options),
    logger,
  });
  const nbdAt = `${appliance.nbdAddress.host}:${appliance.nbdAddress.port}`;
  const httpAt = `http://${appliance.httpAddress.host}:${appliance.httpAddress.port}`;
  logger.info(
    {
      nbd: nbdAt,
      http: httpAt,
      memory: options.memory,
      regions: appliance.registry.size,
      nbdLimits: appliance.nbdServer.effectiveLimits,
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
      `  try        nbdinfo nbd://${nbdAt}/${region ?? ''}`,
      `             qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://${nbdAt}/${region ?? ''}`,
      `  stop       Ctrl-C (or SIGTERM)`,
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
