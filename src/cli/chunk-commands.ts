/**
 * `memfabric region chunk claim|release|ls`: sub-allocation of a region from the command line,
 * thin clients of the appliance's chunk routes (src/appliance/chunk-routes.ts).
 *
 *   memfabric region chunk claim pool --owner job-1 --size 4MiB [--chunk-size 1MiB] [--json]
 *   memfabric region chunk ls pool [--owner job-1] [--json]
 *   memfabric region chunk release pool 4194304 --owner job-1      (or --force)
 */
import { InvalidArgumentError, type Command } from 'commander';
import { adminRequest, type AdminBase } from '../appliance/admin-client.js';
import type { ChunkClaimView, ChunkListingView } from '../appliance/chunk-routes.js';
import { formatSize } from '../size.js';
import { adminTargetFor, type CredentialOptions } from './credentials.js';
import { formatTable } from './table.js';

/** Listing pages `ls` follows at most (4096 allocations each). */
const LS_PAGES_MAX = 256;

function chunksPath(region: string): string {
  return `/v1/regions/${encodeURIComponent(region)}/chunks`;
}

/** Sizes go to the API as numbers when they are plain byte counts, else as strings. */
function sizeValue(size: string): number | string {
  return /^\d+$/.test(size) ? Number(size) : size;
}

function countOption(value: string): number {
  const count = Number(value);
  if (!Number.isSafeInteger(count) || count < 1)
    throw new InvalidArgumentError('must be a whole number >= 1');
  return count;
}

function offsetArgument(value: string): number {
  if (!/^\d{1,16}$/.test(value)) throw new InvalidArgumentError('must be a byte offset (a whole number)');
  return Number(value);
}

export async function chunkClaim(
  base: AdminBase,
  region: string,
  options: { owner: string; size?: string; count?: number; chunkSize?: string },
): Promise<ChunkClaimView> {
  return adminRequest<ChunkClaimView>(base, 'POST', chunksPath(region), {
    owner: options.owner,
    ...(options.size !== undefined ? { size: sizeValue(options.size) } : {}),
    ...(options.count !== undefined ? { count: options.count } : {}),
    ...(options.chunkSize !== undefined ? { chunkSize: sizeValue(options.chunkSize) } : {}),
  });
}

export async function chunkRelease(
  base: AdminBase,
  region: string,
  offset: number,
  options: { owner?: string; force?: boolean },
): Promise<void> {
  const query = new URLSearchParams();
  if (options.owner !== undefined) query.set('owner', options.owner);
  if (options.force) query.set('force', 'true');
  await adminRequest<void>(base, 'DELETE', `${chunksPath(region)}/${offset}?${query.toString()}`);
}

/** Every allocation (of `owner`, if given), following the listing's cursor. */
export async function chunkList(
  base: AdminBase,
  region: string,
  options: { owner?: string } = {},
): Promise<ChunkListingView> {
  let listing: ChunkListingView | undefined;
  let after = 0;
  for (let page = 0; page < LS_PAGES_MAX; page++) {
    const query = new URLSearchParams({ after: String(after) });
    if (options.owner !== undefined) query.set('owner', options.owner);
    const next = await adminRequest<ChunkListingView>(
      base,
      'GET',
      `${chunksPath(region)}?${query.toString()}`,
    );
    if (listing) listing.allocations.push(...next.allocations);
    else listing = next;
    listing.next = next.next;
    if (next.next === null) break;
    after = next.next;
  }
  return listing!;
}

export function formatChunkListing(listing: ChunkListingView): string {
  if (listing.stats === null) return `region ${listing.region} is not sub-allocated (no chunk claimed yet)`;
  const s = listing.stats;
  const summary =
    `region ${listing.region}: ${s.chunksTotal} chunks of ${formatSize(s.chunkSize)}, ${s.chunksUsed} used, ` +
    `${s.chunksFree} free (longest free run ${s.largestFreeRun}), ${s.allocations} allocations, ${s.owners} owners`;
  const header = ['OFFSET', 'LENGTH', 'OWNER'];
  const rows = listing.allocations.map((a) => [String(a.offset), formatSize(a.length), a.owner]);
  const more = listing.next === null ? [] : [`... more from offset ${listing.next}`];
  return [summary, formatTable(header, rows), ...more].join('\n');
}

/**
 * Adds `chunk claim|release|ls` under the `region` command. `withAppliance` adds the
 * `--appliance <url>` option (and the token options) the other region commands have.
 */
export function registerChunkCommands(region: Command, withAppliance: (command: Command) => Command): void {
  const chunk = region.command('chunk').description("claim and release chunks of a region's sub-allocation");
  withAppliance(chunk.command('claim <region>'))
    .description('claim a run of chunks for an owner (the first claim sets the chunk size)')
    .requiredOption('--owner <owner>', 'who holds the chunks')
    .option('--size <size>', 'bytes to claim, rounded up to whole chunks')
    .option('--count <n>', 'chunks to claim', countOption)
    .option('--chunk-size <size>', "the region's chunk size (first claim; default 1MiB)")
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        options: {
          owner: string;
          size?: string;
          count?: number;
          chunkSize?: string;
          json?: boolean;
        } & CredentialOptions,
      ) => {
        const claimed = await chunkClaim(await adminTargetFor(options), name, options);
        console.log(
          options.json
            ? JSON.stringify(claimed, null, 2)
            : `claimed offset ${claimed.offset}, ${formatSize(claimed.length)} of ${claimed.region} for ${claimed.owner}`,
        );
      },
    );
  withAppliance(chunk.command('release'))
    .description('release the chunks claimed at <offset> (trimmed: the next owner reads zeros)')
    .argument('<region>')
    .argument('<offset>', 'byte offset the claim answered', offsetArgument)
    .option('--owner <owner>', 'the owner releasing them')
    .option('--force', 'release whoever holds them (an operator cleaning up after a dead client)')
    .action(
      async (
        name: string,
        offset: number,
        options: { owner?: string; force?: boolean } & CredentialOptions,
      ) => {
        await chunkRelease(await adminTargetFor(options), name, offset, options);
        console.log(`released offset ${offset} of ${name}`);
      },
    );
  withAppliance(chunk.command('ls <region>'))
    .description("list a region's chunk allocations and statistics")
    .option('--owner <owner>', "only this owner's allocations")
    .option('--json', 'print JSON')
    .action(async (name: string, options: { owner?: string; json?: boolean } & CredentialOptions) => {
      const listing = await chunkList(await adminTargetFor(options), name, options);
      console.log(options.json ? JSON.stringify(listing, null, 2) : formatChunkListing(listing));
    });
}
