/**
 * `memfabric fabric ls|open|rm|rebuild`: fabric regions (regions sharded over several
 * appliances, see docs/fabric.md) found by the descriptors their shards carry. Each command is a
 * short-lived fabric client: it finds the region on the appliances given, does its work, and
 * disconnects (never deleting anything but what `rm` names).
 *
 *   memfabric fabric ls --appliances http://10.0.0.1:10880,http://10.0.0.2:10880 [--tenant T|'*'] [--json]
 *   memfabric fabric open vectors --appliances ...      (reopen, print health and shards, detach)
 *   memfabric fabric rebuild vectors --appliances ...   (replace lost shards, refill them, detach)
 *   memfabric fabric rm vectors --appliances ... [--force]
 *   memfabric fabric gc --appliances ... [--dry-run]     (collect what regions left behind)
 *
 * The appliances also come from MEMFABRIC_APPLIANCES (comma-separated); the token as for the
 * other admin commands (--token, MEMFABRIC_TOKEN, --token-file).
 */
import { InvalidArgumentError, type Command } from 'commander';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { Fabric, type FabricRegionInfo } from '../fabric/fabric.js';
import { describeRedundancy, type ExternalRegion } from '../fabric/external-region.js';
import { formatSize } from '../size.js';
import { findToken } from './credentials.js';
import { byteProgress } from './progress.js';
import { normalizeApplianceUrl } from './appliance-url.js';
import { formatTable } from './table.js';

interface FabricCommandOptions {
  appliances?: string[];
  tenant?: string;
  token?: string;
  tokenFile?: string;
  json?: boolean;
}

function urlList(value: string): string[] {
  const urls = value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
  if (urls.length === 0) throw new InvalidArgumentError('name at least one appliance admin URL');
  return urls.map((url) => normalizeApplianceUrl(url, '--appliances'));
}

async function fabricFor(options: FabricCommandOptions): Promise<Fabric> {
  const fromEnv = process.env.MEMFABRIC_APPLIANCES;
  const appliances = options.appliances ?? (fromEnv ? urlList(fromEnv) : undefined);
  if (!appliances) {
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      'name the appliances to look on: --appliances http://HOST:PORT[,...] (or MEMFABRIC_APPLIANCES)',
    );
  }
  const token = await findToken(appliances[0]!, options);
  return new Fabric({
    appliances,
    ...(token !== undefined ? { token } : {}),
    ...(options.tenant !== undefined && options.tenant !== '*' ? { tenant: options.tenant } : {}),
    warn: (message) => console.error(`warning: ${message}`),
  });
}

export function formatFabricRegions(regions: FabricRegionInfo[]): string {
  const header = ['NAME', 'TENANT', 'SIZE', 'REDUNDANCY', 'GEN', 'STATE', 'SHARDS'];
  const rows = regions.map((r) => [
    r.name,
    r.tenant,
    formatSize(r.size),
    describeRedundancy(r.redundancy),
    String(r.generation),
    r.state === 'ready' && r.degraded ? 'degraded' : r.state,
    `${r.shards.filter((s) => s.state === 'live').length}/${r.shards.length} live, ${r.shardsFound.length} found`,
  ]);
  return formatTable(header, rows);
}

function describeRegion(region: ExternalRegion): string {
  const health = region.health();
  const lines = [
    `${region.name}: ${formatSize(region.size)}, ${describeRedundancy(region.redundancy)}, tenant ${region.tenant}, ` +
      `generation ${region.descriptor.generation}, ${health.degraded ? `degraded (${health.lost} lost)` : 'healthy'}, ` +
      `tolerates ${health.tolerance} more lost`,
    ...health.shards.map(
      (s) =>
        `  shard ${s.index}: ${s.state.padEnd(10)} ${s.region} on ${s.appliance}${s.reason ? ` (${s.reason})` : ''}`,
    ),
  ];
  return lines.join('\n');
}

/** Runs `body` with a fabric for the options, closing the fabric (never freeing) after. */
async function withFabric<T>(
  options: FabricCommandOptions,
  body: (fabric: Fabric) => Promise<T>,
): Promise<T> {
  const fabric = await fabricFor(options);
  return body(fabric);
}

export function registerFabricCommands(program: Command): void {
  const fabric = program
    .command('fabric')
    .description('fabric regions: sharded over appliances, found by the descriptors their shards carry');
  const common = (command: Command): Command =>
    command
      .option(
        '--appliances <urls>',
        'appliance admin URLs, comma-separated (default: MEMFABRIC_APPLIANCES)',
        urlList,
      )
      .option('--tenant <tenant>', "the regions' tenant (default: default; ls: '*' for all)")
      .option('--token <token>', 'admin or tenant token (default: MEMFABRIC_TOKEN, then the token file)')
      .option('--token-file <file>', 'file holding the token');

  common(fabric.command('ls'))
    .description('list fabric regions')
    .option('--json', 'print JSON')
    .action(async (options: FabricCommandOptions) => {
      const regions = await withFabric(options, (f) =>
        f.list(options.tenant !== undefined ? { tenant: options.tenant } : {}),
      );
      console.log(options.json ? JSON.stringify(regions, null, 2) : formatFabricRegions(regions));
    });

  common(fabric.command('open <name>'))
    .description('reopen a region by name, print its health and shards, and disconnect')
    .option('--force', 'open even if another client seems to have it open')
    .option('--json', 'print JSON')
    .action(async (name: string, options: FabricCommandOptions & { force?: boolean }) => {
      await withFabric(options, async (f) => {
        const region = await f.open(name, { force: options.force ?? false });
        try {
          console.log(
            options.json
              ? JSON.stringify({ descriptor: region.descriptor, health: region.health() }, null, 2)
              : describeRegion(region),
          );
        } finally {
          await region.detach();
        }
      });
    });

  common(fabric.command('rebuild <name>'))
    .description("replace a region's lost shards on other appliances and refill them from the survivors")
    .option('--force', 'rebuild even if another client seems to have the region open')
    .action(async (name: string, options: FabricCommandOptions & { force?: boolean }) => {
      await withFabric(options, async (f) => {
        const region = await f.open(name, { force: options.force ?? false });
        try {
          const started = performance.now();
          // One bar over every lost shard's bytes: shards refill one after another.
          const lost = region.health().lost;
          const bar = byteProgress(`rebuilding ${name}`, lost * region.shardBytes);
          const finished = new Map<number, number>();
          let rebuilt: number;
          try {
            ({ rebuilt } = await region.rebuild({
              onProgress: ({ shard, bytesDone }) => {
                finished.set(shard, bytesDone);
                let done = 0;
                for (const bytes of finished.values()) done += bytes;
                bar.update(done);
              },
            }));
          } finally {
            bar.stop();
          }
          const seconds = (performance.now() - started) / 1000;
          console.log(
            `rebuilt ${rebuilt} shard(s) of ${name} in ${seconds.toFixed(1)} s` +
              (rebuilt > 0
                ? ` (${formatSize(Math.round((rebuilt * region.shardBytes) / Math.max(seconds, 1e-3)))}/s)`
                : ''),
          );
          console.log(describeRegion(region));
        } finally {
          await region.detach();
        }
      });
    });

  common(fabric.command('gc'))
    .description('delete what regions left behind: replaced shards, half-made regions, unfinished deletes')
    .option('--dry-run', 'only list what would be deleted')
    .option('--json', 'print JSON')
    .action(async (options: FabricCommandOptions & { dryRun?: boolean }) => {
      const result = await withFabric(options, (f) => f.collect({ dryRun: options.dryRun ?? false }));
      if (options.json) {
        console.log(JSON.stringify(result, null, 2));
      } else {
        const verb = options.dryRun ? 'would delete' : 'deleted';
        for (const shard of result.collected) {
          console.log(
            `${verb} ${shard.kind} shard ${shard.region} on ${shard.appliance} (region ${shard.name}, id ${shard.id})`,
          );
        }
        for (const shard of result.failed)
          console.error(`warning: ${shard.region} on ${shard.appliance}: ${shard.error}`);
        console.log(`${result.collected.length} shard(s) ${verb}`);
      }
      if (result.failed.length > 0) process.exitCode = 1;
    });

  common(fabric.command('rm <name>'))
    .description('delete a fabric region: every shard, then its name')
    .option('--force', 'delete even if a client has it open')
    .action(async (name: string, options: FabricCommandOptions & { force?: boolean }) => {
      const result = await withFabric(options, (f) => f.delete(name, { force: options.force ?? false }));
      console.log(`deleted ${name}: ${result.shardsDeleted} shard(s)`);
      for (const left of result.leftBehind) console.error(`warning: left behind ${left}`);
      if (result.leftBehind.length > 0) process.exitCode = 1;
    });
}
