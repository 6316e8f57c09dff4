/**
 * Sub-allocation on the admin API: several clients claim chunks of one pre-allocated region
 * (seed 001), and the appliance's ChunkAllocator (chunks.ts) guarantees that no chunk is held
 * by two owners at once. Routes:
 *
 *   POST   /v1/regions/:name/chunks          { owner, size? | count?, chunkSize? }
 *            -> 201 { region, offset, length, owner, chunkSize }
 *   GET    /v1/regions/:name/chunks          ?owner= &after= &limit=
 *            -> { region, chunkSize, stats, owners, allocations, next }
 *   DELETE /v1/regions/:name/chunks/:offset  ?owner= | ?force=true      -> 204
 *
 * The first claim on a region enables sub-allocation with its `chunkSize` (default 1 MiB);
 * later claims may omit it or must name the same size (else 409 MF_CONFLICT). A claim takes
 * `count` chunks, or enough chunks to hold `size` bytes, or one chunk. No run of free chunks
 * long enough: 507 MF_CHUNKS_EXHAUSTED. Releasing someone else's chunk: 409 MF_CONFLICT
 * (an operator may pass force=true); an offset where no allocation starts: 404.
 *
 * Fresh bytes only: a chunk's bytes are trimmed when it is released (its frames go back to
 * the pool at once and the next owner never sees the previous owner's data) and again when it
 * is claimed (so a claim reads as zeros even if something wrote into the chunk over NBD while
 * it was free, or before sub-allocation was enabled). Both happen inside the same synchronous
 * handler as the allocator update, so no other request can see the chunk in between.
 *
 * What this does not do: NBD serves the whole region and knows nothing of chunks, so the
 * allocator coordinates cooperating clients (the fabric's SubAllocator bounds every read and
 * write to its chunk); it does not stop a client from writing outside its chunk over NBD.
 * Allocations live in the appliance's memory only: they are not saved with file-backed
 * regions and are gone after a restart. Clones start without any.
 *
 * Each region's allocator hangs off the Region object in a WeakMap: deleting the region drops
 * its allocator with it, and a new region of the same name starts with none.
 */
import type { FastifyInstance } from 'fastify';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { parseSize } from '../size.js';
import type { Appliance } from './appliance.js';
import {
  CHUNK_BYTES_DEFAULT,
  CHUNKS_MAX,
  ChunkAllocator,
  LIST_LIMIT_MAX,
  checkOwner,
  type ChunkAllocation,
  type ChunkOwnerStats,
  type ChunkStats,
} from './chunks.js';
import type { Region } from './region.js';

const allocators = new WeakMap<Region, ChunkAllocator>();

/** The region's chunk allocator, if sub-allocation has been enabled on it. */
export function regionChunks(region: Region): ChunkAllocator | undefined {
  return allocators.get(region);
}

/** A claimed run of chunks, as POST answers it. */
export interface ChunkClaimView extends ChunkAllocation {
  region: string;
  chunkSize: number;
}

/** What GET answers. `chunkSize` and `stats` are null until the region's first claim. */
export interface ChunkListingView {
  region: string;
  chunkSize: number | null;
  stats: ChunkStats | null;
  owners: ChunkOwnerStats[];
  allocations: ChunkAllocation[];
  /** Pass as `after` to list the rest; null when there is no more. */
  next: number | null;
}

const sizeSchema = {
  anyOf: [
    { type: 'integer', minimum: 1 },
    { type: 'string', minLength: 1, maxLength: 32 },
  ],
};
const ownerSchema = { type: 'string', minLength: 1, maxLength: 128 };
const offsetPattern = '^(0|[1-9][0-9]{0,15})$';

const claimBody = {
  type: 'object',
  required: ['owner'],
  additionalProperties: false,
  properties: {
    owner: ownerSchema,
    size: sizeSchema,
    count: { type: 'integer', minimum: 1, maximum: CHUNKS_MAX },
    chunkSize: sizeSchema,
  },
} as const;

const listQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    owner: ownerSchema,
    after: { type: 'string', pattern: offsetPattern },
    limit: { type: 'string', pattern: '^[1-9][0-9]{0,3}$' },
  },
} as const;

const releaseParams = {
  type: 'object',
  required: ['name', 'offset'],
  properties: {
    name: { type: 'string' },
    offset: { type: 'string', pattern: offsetPattern },
  },
} as const;

const releaseQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    owner: ownerSchema,
    force: { type: 'string', enum: ['true', 'false'] },
  },
} as const;

interface ClaimBody {
  owner: string;
  size?: number | string;
  count?: number;
  chunkSize?: number | string;
}

export function registerChunkRoutes(app: FastifyInstance, appliance: Appliance): void {
  const registry = appliance.registry;

  app.post<{ Params: { name: string }; Body: ClaimBody }>(
    '/v1/regions/:name/chunks',
    { schema: { body: claimBody } },
    async (request, reply) => {
      const region = registry.require(request.params.name);
      const body = request.body;
      // Everything is checked before anything changes: a refused claim enables nothing.
      const owner = checkOwner(body.owner);
      if (region.readOnly) {
        throw new MemfabricError(
          ErrorCodes.READ_ONLY,
          `region ${region.name} is read-only; chunks are claimed to be written, so claim them in a writable region`,
        );
      }
      if (body.size !== undefined && body.count !== undefined) {
        throw invalidArgument('give either size (bytes) or count (chunks), not both');
      }
      const chunkBytes = body.chunkSize === undefined ? undefined : parseSize(body.chunkSize, 'chunkSize');
      const size = body.size === undefined ? undefined : parseSize(body.size, 'size');
      if (size === 0) throw invalidArgument('size must be at least 1 byte');
      let chunks = allocators.get(region);
      if (chunks && chunkBytes !== undefined && chunkBytes !== chunks.chunkBytes) {
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          `region ${region.name} is sub-allocated in ${chunks.chunkBytes}-byte chunks, not ${chunkBytes}; ` +
            'omit chunkSize or use that size',
        );
      }
      if (!chunks) {
        chunks = new ChunkAllocator({
          regionBytes: region.size,
          chunkBytes: chunkBytes ?? CHUNK_BYTES_DEFAULT,
          pageSize: region.blockSize,
        });
      }
      const count = body.count ?? (size === undefined ? 1 : Math.ceil(size / chunks.chunkBytes));
      // From here to the reply nothing awaits: the search, the marking and the trim run as one
      // turn of the event loop, so no other claim can interleave (see chunks.ts).
      const allocation = chunks.allocate(owner, count);
      if (!allocators.has(region)) {
        allocators.set(region, chunks);
        appliance.logger?.info(
          { region: region.name, chunkSize: chunks.chunkBytes, chunks: chunks.chunks },
          'sub-allocation enabled',
        );
      }
      region.trim(allocation.offset, allocation.length);
      appliance.logger?.debug({ region: region.name, ...allocation }, 'chunks claimed');
      const view: ChunkClaimView = { region: region.name, ...allocation, chunkSize: chunks.chunkBytes };
      return reply.status(201).send(view);
    },
  );

  app.get<{ Params: { name: string }; Querystring: { owner?: string; after?: string; limit?: string } }>(
    '/v1/regions/:name/chunks',
    { schema: { querystring: listQuery } },
    async (request) => {
      const region = registry.require(request.params.name);
      const chunks = allocators.get(region);
      const query = request.query;
      const listing = chunks?.list({
        ...(query.owner !== undefined ? { owner: query.owner } : {}),
        ...(query.after !== undefined ? { after: Number(query.after) } : {}),
        limit: query.limit === undefined ? LIST_LIMIT_MAX : Math.min(Number(query.limit), LIST_LIMIT_MAX),
      });
      const view: ChunkListingView = {
        region: region.name,
        chunkSize: chunks?.chunkBytes ?? null,
        stats: chunks?.stats() ?? null,
        owners: chunks?.owners() ?? [],
        allocations: listing?.allocations ?? [],
        next: listing?.next ?? null,
      };
      return view;
    },
  );

  app.delete<{
    Params: { name: string; offset: string };
    Querystring: { owner?: string; force?: 'true' | 'false' };
  }>(
    '/v1/regions/:name/chunks/:offset',
    { schema: { params: releaseParams, querystring: releaseQuery } },
    async (request, reply) => {
      const region = registry.require(request.params.name);
      const force = request.query.force === 'true';
      const owner = request.query.owner;
      if (owner === undefined && !force) {
        throw invalidArgument('name the owner releasing the chunk (?owner=...), or force the release');
      }
      const chunks = allocators.get(region);
      if (!chunks) {
        throw new MemfabricError(
          ErrorCodes.NOT_FOUND,
          `region ${region.name} has no chunk allocations; claim some with POST /v1/regions/${region.name}/chunks`,
        );
      }
      const offset = Number(request.params.offset);
      // As with a claim: the release and the trim happen in one synchronous step.
      const freed = chunks.free(offset, owner, force);
      region.trim(freed.offset, freed.length);
      appliance.logger?.debug({ region: region.name, ...freed, force }, 'chunks released');
      return reply.status(204).send();
    },
  );
}
