/**
 * `memfabric controller`: a fleet controller candidate in the foreground (src/catalog/controller.ts),
 * logging pino lines to stdout until SIGINT or SIGTERM, when it resigns (a standby leads at once).
 *
 *   memfabric controller --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --token-file admin.token \
 *     [--max-concurrent-rebuilds 2] [--rebuild-rate 100MiB] [--etcd-ttl 5]
 *
 * Every appliance started with --etcd runs a candidate too (unless --no-controller), so this is
 * only needed for a controller on a machine without an appliance. The token (--token,
 * MEMFABRIC_TOKEN, --token-file) must be an admin token every appliance of the fleet accepts.
 */
import { InvalidArgumentError, type Command } from 'commander';
import pino from 'pino';
import { FleetController } from '../catalog/controller.js';
import { parseSize } from '../size.js';
import { findToken } from './credentials.js';
import { readFileSync } from 'node:fs';

interface ControllerCommandOptions {
  etcd: string;
  etcdTtl?: number;
  token?: string;
  tokenFile?: string;
  ca?: string;
  maxConcurrentRebuilds?: number;
  rebuildRate?: number;
  logLevel: string;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number, 1 or more');
  return n;
}

function rate(value: string): number {
  try {
    const bytes = parseSize(value.replace(/\/s$/, ''), '--rebuild-rate');
    if (bytes < 1) throw new Error('must be at least 1 byte per second');
    return bytes;
  } catch (error) {
    throw new InvalidArgumentError(`${(error as Error).message} (write it as e.g. 100MiB)`);
  }
}

export async function runController(options: ControllerCommandOptions): Promise<void> {
  const logger = pino({ level: options.logLevel, base: { service: 'memfabric-controller' } });
  const endpoints = options.etcd
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
  const token = await findToken('', options);
  const caFile = options.ca ?? process.env.MEMFABRIC_CA;
  const controller = FleetController.start({
    etcd: endpoints,
    ...(token !== undefined ? { token } : {}),
    ...(caFile !== undefined ? { ca: readFileSync(caFile) } : {}),
    ...(options.etcdTtl !== undefined ? { ttlSeconds: options.etcdTtl } : {}),
    ...(options.maxConcurrentRebuilds !== undefined
      ? { maxConcurrentRebuilds: options.maxConcurrentRebuilds }
      : {}),
    ...(options.rebuildRate !== undefined ? { rebuildBytesPerSecond: options.rebuildRate } : {}),
    logger,
  });
  logger.info({ id: controller.id, etcd: endpoints }, 'controller campaigning');
  if (token === undefined) {
    logger.warn(
      'no admin token (--token, MEMFABRIC_TOKEN or --token-file): the appliances will refuse to create the replacement shards',
    );
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'stopping');
      void controller.stop().finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

export function registerControllerCommand(program: Command): void {
  program
    .command('controller')
    .description('run a fleet controller candidate: rebuilds regions that lost a shard (docs/fleet.md)')
    .requiredOption('--etcd <urls>', 'etcd client URLs (comma-separated)')
    .option('--etcd-ttl <seconds>', 'lease TTL of the campaign (default 5)', positiveInteger)
    .option(
      '--token <token>',
      'admin token every appliance accepts (default: MEMFABRIC_TOKEN, then --token-file)',
    )
    .option('--token-file <file>', 'file holding that admin token')
    .option('--ca <file>', 'CA certificate(s) to trust for https:// appliances (default: MEMFABRIC_CA)')
    .option('--max-concurrent-rebuilds <n>', 'regions rebuilt at once (default 1)', positiveInteger)
    .option(
      '--rebuild-rate <size>',
      'refill rate per shard per second, e.g. 100MiB (default unlimited)',
      rate,
    )
    .option('--log-level <level>', 'pino log level', 'info')
    .action(runController);
}
