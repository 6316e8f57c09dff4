/**
 * The embedded catalog: no service beyond the appliances.
 *
 * Descriptors. Each shard's appliance keeps a copy of the region's descriptor beside the
 * shard's region (PUT /v1/regions/:name/descriptor, which refuses a generation that is not
 * higher than the stored one). Finding a region is a scan: every appliance the fabric knows
 * lists its regions with their descriptors, in parallel; the copies are grouped by region id
 * and the highest generation wins. A copy that fails its checksum is skipped.
 *
 * Names. Region names are unique per tenant. A name is claimed before any shard is made, on
 * the appliances' names tables, in one fixed order (sorted admin URLs), stopping at the first
 * appliance where another region holds it; a claim needs a majority of the known appliances.
 * Two clients racing for one name take the claims in the same order, so whoever wins the first
 * contested appliance wins: the other stops there, releases what it took and gets
 * MF_ALREADY_EXISTS. The majority makes two clients that see different halves of the fleet
 * unable to both succeed. (Fleet mode on etcd gives the same guarantee from one transaction.)
 *
 * Half-made regions. A client killed while allocating leaves a claim, and perhaps shards in
 * state `creating`. A later create of the same name collects them when the claim is older than
 * the grace period and none of its shards has an NBD connection: the shards are deleted, the
 * claims released, and the create goes on.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { ApplianceDirectory } from '../fabric/directory.js';
import type { Catalog, CatalogEntry, RegionRef } from './catalog.js';
import { groupNewest, scanCopies, storeCopies } from './copies.js';
import type { RegionDescriptor } from './descriptor.js';

/** A half-made region younger than this is left alone: its client may still be allocating. */
export const HALF_MADE_GRACE_MS_DEFAULT = 60_000;

export interface EmbeddedCatalogOptions {
  halfMadeGraceMs?: number;
  /** Where skipped copies are reported (a damaged descriptor, an appliance that did not answer). */
  warn?: (message: string) => void;
}

export class EmbeddedCatalog implements Catalog {
  readonly kind = 'embedded' as const;
  private readonly halfMadeGraceMs: number;
  private readonly warn: (message: string) => void;

  constructor(
    private readonly directory: ApplianceDirectory,
    options: EmbeddedCatalogOptions = {},
  ) {
    this.halfMadeGraceMs = options.halfMadeGraceMs ?? HALF_MADE_GRACE_MS_DEFAULT;
    this.warn = options.warn ?? (() => undefined);
  }

  async create(descriptor: RegionDescriptor): Promise<void> {
    try {
      await this.claim(descriptor);
    } catch (error) {
      if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.ALREADY_EXISTS) throw error;
      // The holder may be a half-made region whose client died: collect it and try once more.
      if (!(await this.collectHalfMade(descriptor.tenant, descriptor.name))) throw error;
      await this.claim(descriptor);
    }
  }

  async update(next: RegionDescriptor): Promise<void> {
    await storeCopies(this.directory, next);
  }

  async get(tenant: string, name: string): Promise<CatalogEntry | undefined> {
    const entries = groupNewest(await scanCopies(this.directory, this.warn)).filter(
      (entry) => entry.descriptor.tenant === tenant && entry.descriptor.name === name,
    );
    if (entries.length <= 1) return entries[0];
    // Two regions under one name: one is ready, the others half-made or being deleted.
    const ready = entries.filter((entry) => entry.descriptor.state === 'ready');
    if (ready.length === 1) return ready[0];
    throw new MemfabricError(
      ErrorCodes.CONFLICT,
      `${entries.length} regions are named ${name} (tenant ${tenant}), ids ${entries
        .map((entry) => entry.descriptor.id)
        .join(', ')}; delete the unwanted one with \`memfabric fabric rm ${name} --id ID\``,
    );
  }

  async list(tenant?: string): Promise<CatalogEntry[]> {
    return groupNewest(await scanCopies(this.directory, this.warn)).filter(
      (entry) => tenant === undefined || entry.descriptor.tenant === tenant,
    );
  }

  async remove(descriptor: RegionRef): Promise<void> {
    await this.releaseClaims(descriptor.tenant, descriptor.name, descriptor.id);
  }

  async close(): Promise<void> {}

  /** Claims the name on a majority of the known appliances, in sorted order. */
  private async claim(descriptor: RegionDescriptor): Promise<void> {
    const { tenant, name, id } = descriptor;
    const urls = [...this.directory.urls].sort();
    const majority = Math.floor(urls.length / 2) + 1;
    const taken: string[] = [];
    const unreachable: string[] = [];
    for (const url of urls) {
      try {
        await this.directory.claimName(url, { tenant, name, id });
        taken.push(url);
      } catch (error) {
        if (error instanceof MemfabricError && error.code === ErrorCodes.ALREADY_EXISTS) {
          await this.releaseOn(taken, tenant, name, id);
          throw new MemfabricError(
            ErrorCodes.ALREADY_EXISTS,
            `a fabric region named ${name} exists for tenant ${tenant} (${error.message}); ` +
              'open it with fabric.open(), or choose another name',
          );
        }
        unreachable.push(`${url}: ${(error as Error).message}`);
      }
    }
    if (taken.length < majority) {
      await this.releaseOn(taken, tenant, name, id);
      throw new MemfabricError(
        ErrorCodes.CATALOG_UNAVAILABLE,
        `the name ${name} must be claimed on a majority (${majority}) of the ${urls.length} known appliances, ` +
          `but only ${taken.length} answered (${unreachable.join('; ')}); bring appliances back or remove dead ones ` +
          'from the fabric, then retry',
      );
    }
  }

  private async releaseClaims(tenant: string, name: string, id: string): Promise<void> {
    await this.releaseOn([...this.directory.urls], tenant, name, id);
  }

  private async releaseOn(urls: string[], tenant: string, name: string, id: string): Promise<void> {
    await Promise.all(
      urls.map((url) =>
        this.directory.releaseName(url, tenant, name, id).catch((error: unknown) => {
          this.warn(`releasing the name ${name} on ${url} failed: ${(error as Error).message}`);
        }),
      ),
    );
  }

  /**
   * Collects the region holding (tenant, name) if it is half-made: its claim is older than the
   * grace period, it never became ready, and none of its shards has an NBD connection.
   * Resolves true when the name was freed.
   */
  private async collectHalfMade(tenant: string, name: string): Promise<boolean> {
    const holders = new Map<string, number>();
    await Promise.all(
      this.directory.urls.map(async (url) => {
        try {
          for (const claim of await this.directory.listNames(url)) {
            if (claim.tenant === tenant && claim.name === name) {
              holders.set(claim.id, Math.min(holders.get(claim.id) ?? Infinity, Date.parse(claim.createdAt)));
            }
          }
        } catch {
          // An appliance that does not answer holds no claim we could release anyway.
        }
      }),
    );
    if (holders.size !== 1) return false;
    const [[id, claimedAt]] = [...holders];
    if (Date.now() - claimedAt < this.halfMadeGraceMs) return false;
    const copies = (await scanCopies(this.directory, this.warn)).filter((copy) => copy.descriptor.id === id);
    const newest = copies.reduce<RegionDescriptor | undefined>(
      (best, copy) => (best && best.generation >= copy.descriptor.generation ? best : copy.descriptor),
      undefined,
    );
    if (newest && newest.state === 'ready') return false;
    if (copies.some((copy) => copy.region.connections > 0)) return false;
    for (const copy of copies) {
      await this.directory.deleteRegion(copy.appliance, copy.region.name);
    }
    await this.releaseClaims(tenant, name, id);
    this.warn(
      `collected the half-made region ${name} (tenant ${tenant}, id ${id}): ${copies.length} shard(s)`,
    );
    return true;
  }
}
