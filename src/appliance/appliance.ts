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
import { NbdServer, type NbdStats } from '../nbd/index.js';
import { parseSize } from '../size.js';
import { exposureWarnings, type AdminAuth, type ReadAccess } from './auth.js';
import { loadAdminAuth } from './auth-config.js';
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
  logger?: Logger;
  /** Who may use the admin API; see docs/appliance.md "Security". */
  auth?: ApplianceAuthOptions;
  /** Serve the admin API over HTTPS with this certificate and key (PEM). */
  httpTls?: { cert: string | Buffer; key: string | Buffer };
  /** CA certificates (PEM) trusted when this appliance calls another's HTTPS admin API (migration). */
  peerCa?: string | Buffer;
}

export interface ApplianceAuthOptions {
  /** The admin token, as given (nothing is written). */
  token?: string;
  /** The file holding the admin token: read, or created with a new token (mode 0600). */
  tokenFile?: string;
  /**
   * Tenant tokens: a map of tenant to token, or a JSON file of one. Default: `<dataDir>/tenants.json`
   * if it exists.
   */
  tenantTokens?: string | Record<string, string>;
  /** 'open' (default): loopback clients may read without a token; 'token': every call needs one. */
  readAccess?: ReadAccess;
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
  private auth: AdminAuth | undefined;
  private https = false;
  private token = '';
  private tokenFile: string | undefined;
  /** CA certificates trusted when calling other appliances (migration). */
  readonly peerCa: string | Buffer | undefined;
  /** Warnings about how the appliance is exposed (also logged at start). */
  warnings: string[] = [];

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
    this.peerCa = options.peerCa;
    const log = options.logger;
    this.nbdServer = new NbdServer({
      directory: this.registry,
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

  /** The admin token: sent as `Authorization: Bearer <token>` by in-process clients. */
  get adminToken(): string {
    return this.token;
  }

  /** The file that holds the admin token, or undefined when it lives in memory only. */
  get adminTokenFile(): string | undefined {
    return this.tokenFile;
  }

  /** The admin API's access rules (for createAdminApi). */
  get adminAuth(): AdminAuth {
    if (!this.auth) throw new Error('the appliance has not started');
    return this.auth;
  }

  /** The admin API's URL: http(s)://host:port (a wildcard host becomes 127.0.0.1). */
  get httpUrl(): string {
    const { host, port } = this.httpAddress;
    const reachable = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
    const shown = reachable.includes(':') ? `[${reachable}]` : reachable;
    return `${this.https ? 'https' : 'http'}://${shown}:${port}`;
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
    // First: a bad token or tenant file stops the start before any region is loaded.
    const access = await loadAdminAuth(options, this.logger);
    this.auth = access.auth;
    this.token = access.token;
    this.tokenFile = access.tokenFile;
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
    const httpPort = options.http?.port ?? HTTP_PORT_DEFAULT;
    const httpHost = options.http?.host ?? HOST_DEFAULT;
    this.https = options.httpTls !== undefined;
    this.warnings = exposureWarnings({
      http: { host: httpHost, tls: this.https },
      nbd: { host: this.nbdAddress.host, tls: false },
    });
    for (const warning of this.warnings) this.logger?.warn({ component: 'security' }, warning);
    this.http = createAdminApi(this, options.httpTls);
    await this.http.listen({ port: httpPort, host: httpHost });
    const address = this.http.server.address();
    this.httpAddress = {
      host: httpHost,
      port: typeof address === 'object' && address !== null ? address.port : httpPort,
    };
  }
}
