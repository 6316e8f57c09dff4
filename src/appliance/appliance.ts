/**
 * A memory appliance (seed 001): one process whose memory budget (a frame pool) is carved into
 * regions that clients use over the network. The data path is NBD (src/nbd/), so qemu, libnbd,
 * fio and the kernel use regions unchanged; the control plane is an HTTP JSON API with a small
 * dashboard and Prometheus metrics. A same-page merger runs over the regions of each tenant.
 *
 *   const appliance = await Appliance.start({ memory: '2GiB' });
 *   // nbd://127.0.0.1:10809/default, http://127.0.0.1:10880/
 *   await appliance.stop();
 */
import { mkdir } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { FramePool, SamePageMerger, type MergerStats } from '../memory/index.js';
import { NbdServer, type NbdClientTls, type NbdServerTlsOptions, type NbdStats } from '../nbd/index.js';
import { parseSize } from '../size.js';
import { nbdExposureWarning } from './exposure.js';
import { createAdminApi } from './http-api.js';
import { RegionRegistry } from './registry.js';

export const NBD_PORT_DEFAULT = 10809;
export const HTTP_PORT_DEFAULT = 10880;
export const HOST_DEFAULT = '127.0.0.1';
export const MEMORY_DEFAULT = '1GiB';
export const DEFAULT_REGION_NAME = 'default';
export const MERGE_INTERVAL_MS_DEFAULT = 50;
export const MERGE_BATCH_MS_MAX = 5;

export interface Endpoint {
  host: string;
  port: number;
}

export interface ApplianceOptions {
  /** Where NBD listens. Default 127.0.0.1:10809; port 0 picks a free one. */
  nbd?: Partial<Endpoint>;
  /** Where the admin API listens. Default 127.0.0.1:10880; port 0 picks a free one. */
  http?: Partial<Endpoint>;
  /** The frame budget: all regions together hold at most this much. Default 1 GiB. */
  memory?: number | string;
  pageSize?: number;
  /** Directory for file-backed regions; they are loaded from it at start. */
  dataDir?: string;
  /** The region the empty export name serves; created if missing. `false`: none. */
  defaultRegion?: { name?: string; size?: number | string } | false;
  /** Background same-page merging; `false` turns it off. */
  merge?: { intervalMs?: number; pagesPerBatch?: number; quietEpochs?: number } | false;
  /**
   * NBD TLS (STARTTLS): mode off|on|require, a certificates directory and/or a PSK file (the PSK
   * identity names the tenant a connection may see; `adminIdentities` see all). `peer`: the
   * credentials this appliance presents to other appliances (migration); by default the same
   * files, as an admin identity (or the region's tenant) for PSK, ca-cert.pem (+ client-cert.pem) for X.509.
   */
  tls?: NbdServerTlsOptions & { peer?: NbdClientTls };
  logger?: Logger;
}

export interface ApplianceStats {
  memory: {
    pageSize: number;
    capacityBytes: number;
    usedBytes: number;
    freeBytes: number;
    /** Bytes the regions would use without sharing: Σ resident bytes of every region. */
    logicalBytes: number;
  };
  frames: { capacity: number; used: number; free: number; cowCopies: number };
  regions: number;
  merger: MergerStats | null;
  nbd: NbdStats;
}

export class Appliance {
  readonly pool: FramePool;
  readonly merger: SamePageMerger | undefined;
  readonly registry: RegionRegistry;
  readonly nbdServer: NbdServer;
  readonly logger: Logger | undefined;
  nbdAddress: Endpoint = { host: HOST_DEFAULT, port: 0 };
  httpAddress: Endpoint = { host: HOST_DEFAULT, port: 0 };
  private http: FastifyInstance | undefined;
  private stopping: Promise<void> | undefined;
  private readonly tlsOptions: ApplianceOptions['tls'];

  private constructor(options: ApplianceOptions) {
    const memory = parseSize(options.memory ?? MEMORY_DEFAULT, 'memory');
    this.pool = new FramePool({
      capacity: memory,
      ...(options.pageSize ? { pageSize: options.pageSize } : {}),
    });
    const merge = options.merge ?? {};
    this.merger =
      merge === false ? undefined : new SamePageMerger(this.pool, { quietEpochs: merge.quietEpochs ?? 1 });
    this.registry = new RegionRegistry({
      pool: this.pool,
      ...(this.merger ? { merger: this.merger } : {}),
      ...(options.dataDir ? { dataDir: options.dataDir } : {}),
    });
    this.logger = options.logger;
    this.tlsOptions = options.tls;
    const log = options.logger;
    this.nbdServer = new NbdServer({
      directory: this.registry,
      ...(options.tls ? { tls: options.tls } : {}),
      logger: {
        debug: (message) => log?.debug({ component: 'nbd' }, message),
        info: (message) => log?.info({ component: 'nbd' }, message),
        warn: (message) => log?.warn({ component: 'nbd' }, message),
        error: (message) => log?.error({ component: 'nbd' }, message),
      },
    });
  }

  /** Starts an appliance: loads file-backed regions, creates the default region, listens. */
  static async start(options: ApplianceOptions = {}): Promise<Appliance> {
    const appliance = new Appliance(options);
    try {
      await appliance.open(options);
    } catch (error) {
      await appliance.stop().catch(() => undefined);
      throw error;
    }
    return appliance;
  }

  stats(): ApplianceStats {
    const pool = this.pool;
    let logicalBytes = 0;
    for (const region of this.registry.all()) logicalBytes += region.stats().residentBytes;
    return {
      memory: {
        pageSize: pool.pageSize,
        capacityBytes: pool.capacity * pool.pageSize,
        usedBytes: pool.used * pool.pageSize,
        freeBytes: pool.free * pool.pageSize,
        logicalBytes,
      },
      frames: { capacity: pool.capacity, used: pool.used, free: pool.free, cowCopies: pool.cowCopies },
      regions: this.registry.size,
      merger: this.merger?.stats() ?? null,
      nbd: this.nbdServer.stats(),
    };
  }

  /**
   * TLS credentials for reaching another appliance's NBD port on behalf of `tenant` (migration),
   * or undefined when this appliance does not use TLS. The appliances of one deployment are
   * expected to share their TLS files.
   */
  peerTls(tenant: string): NbdClientTls | undefined {
    const tls = this.tlsOptions;
    if (tls === undefined || tls.mode === 'off') return undefined;
    if (tls.peer !== undefined) return tls.peer;
    if (tls.psk !== undefined) {
      return { psk: { identity: tls.adminIdentities?.[0] ?? tenant, file: tls.psk } };
    }
    return tls.certificates === undefined ? undefined : { certificates: tls.certificates };
  }

  /** Stops listening, ends connections, saves file-backed regions and frees memory. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.merger?.stop();
      await Promise.allSettled([this.nbdServer.close(), this.http?.close()]);
      await this.registry.close();
      this.merger?.destroy();
      this.logger?.info('appliance stopped');
    })();
    return this.stopping;
  }

  private async open(options: ApplianceOptions): Promise<void> {
    if (options.dataDir) {
      await mkdir(options.dataDir, { recursive: true });
      const loaded = await this.registry.loadFromDataDir();
      for (const region of loaded) {
        this.logger?.info(
          { region: region.name, size: region.size, file: region.backing?.imagePath },
          'region loaded',
        );
      }
    }
    if (options.defaultRegion !== false) {
      const name = options.defaultRegion?.name ?? DEFAULT_REGION_NAME;
      if (!this.registry.find(name)) {
        await this.registry.create({
          name,
          size: options.defaultRegion?.size ?? this.pool.capacity * this.pool.pageSize,
        });
      }
      this.registry.defaultRegion = name;
    }
    const merge = options.merge ?? {};
    if (merge !== false && this.merger) {
      // Small batches often: each holds the event loop (and so every NBD client) for at most
      // MERGE_BATCH_MS_MAX, and merging takes at most about a tenth of a core.
      this.merger.start({
        intervalMs: merge.intervalMs ?? MERGE_INTERVAL_MS_DEFAULT,
        pagesPerBatch: merge.pagesPerBatch ?? 8192,
        maxMsPerBatch: MERGE_BATCH_MS_MAX,
      });
    }
    this.nbdAddress = await this.nbdServer.listen(
      options.nbd?.port ?? NBD_PORT_DEFAULT,
      options.nbd?.host ?? HOST_DEFAULT,
    );
    const exposed = nbdExposureWarning(options.nbd?.host ?? HOST_DEFAULT, this.nbdServer.tlsMode);
    if (exposed !== undefined) this.logger?.warn({ component: 'nbd' }, exposed);
    this.http = createAdminApi(this);
    const httpPort = options.http?.port ?? HTTP_PORT_DEFAULT;
    const httpHost = options.http?.host ?? HOST_DEFAULT;
    await this.http.listen({ port: httpPort, host: httpHost });
    const address = this.http.server.address();
    this.httpAddress = {
      host: httpHost,
      port: typeof address === 'object' && address !== null ? address.port : httpPort,
    };
  }
}
