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
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { FramePool, SamePageMerger, checkCpuShare, checkSliceMs, type MergerStats } from '../memory/index.js';
import { ErrorCodes, MemfabricError } from '../errors.js';
import {
  NbdServer,
  type NbdClientTls,
  type NbdLimits,
  type NbdServerTlsOptions,
  type NbdStats,
} from '../nbd/index.js';
import { parseSize } from '../size.js';
import { ApplianceRegistration } from '../catalog/registration.js';
import { FleetController, type FleetControllerOptions } from '../catalog/controller.js';
import { nodeFileLayer, type FileLayer } from './file-layer.js';
import { type AdminAuth, type ReadAccess } from './auth.js';
import { loadAdminAuth } from './auth-config.js';
import { exposureWarnings } from './exposure.js';
import { createAdminApi } from './http-api.js';
import { NameTable } from './names.js';
import { RegionRegistry, type RegionState, type UnsavedRegion } from './registry.js';
import { EnospcLog } from './enospc-log.js';

export const NBD_PORT_DEFAULT = 10809;
export const HTTP_PORT_DEFAULT = 10880;
export const HOST_DEFAULT = '127.0.0.1';
export const MEMORY_DEFAULT = '1GiB';
export const DEFAULT_REGION_NAME = 'default';
/** The merger's share of one core unless told otherwise (`--merge-cpu`). */
export const MERGE_CPU_SHARE_DEFAULT = 0.1;
/** Longest one merger slice holds the event loop (and so every NBD client). */
export const MERGE_SLICE_MS_MAX = 5;

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
  /**
   * Directory for file-backed regions (created if missing). Their regions are listed at start
   * and loaded in the background once the appliance listens (`appliance.loaded`).
   */
  dataDir?: string;
  /** The file operations file-backed regions use (tests inject failures). Default: node:fs. */
  fileLayer?: FileLayer;
  /** The region the empty export name serves; created if missing. `false`: none. */
  defaultRegion?: { name?: string; size?: number | string } | false;
  /**
   * Background same-page merging; `false` turns it off. `cpuShare`: the share of one core it
   * uses, from 0.001 to 1 (default 0.1); `sliceMs`: the longest one slice holds the event loop
   * (default 5); `quietEpochs`: see MergerOptions. Bad values: MF_INVALID_ARGUMENT at start.
   */
  merge?: { cpuShare?: number; sliceMs?: number; quietEpochs?: number } | false;
  /** Bounds on what NBD clients may hold (connections, buffers, timeouts); see docs/nbd.md. */
  nbdLimits?: NbdLimits;
  /**
   * NBD TLS (STARTTLS): mode off|on|require, a certificates directory and/or a PSK file (the PSK
   * identity names the tenant a connection may see; `adminIdentities` see all). `peer`: the
   * credentials this appliance presents to other appliances (migration); by default the same
   * files, as an admin identity (or the region's tenant) for PSK, ca-cert.pem (+ client-cert.pem) for X.509.
   */
  tls?: NbdServerTlsOptions & { peer?: NbdClientTls };
  logger?: Logger;
  /**
   * Told the bytes read so far of those the file-backed regions found at start have to read,
   * while they load (the CLI draws a progress bar from it).
   */
  onLoadProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Who may use the admin API; see docs/appliance.md "Security". */
  auth?: ApplianceAuthOptions;
  /** Serve the admin API over HTTPS with this certificate and key (PEM). */
  httpTls?: { cert: string | Buffer; key: string | Buffer };
  /** CA certificates (PEM) trusted when this appliance calls another's HTTPS admin API (migration). */
  peerCa?: string | Buffer;
  /** Fleet mode: etcd client URLs to register this appliance in (see docs/fleet.md). */
  etcd?: string[];
  /** Lease TTL of the etcd registration, in seconds (default 5). */
  etcdTtl?: number;
  /**
   * Fleet mode: run a fleet controller candidate here (default on with `etcd`; false: none).
   * It uses this appliance's admin token, which every appliance of the fleet must accept.
   */
  controller?:
    boolean | Partial<Pick<FleetControllerOptions, 'maxConcurrentRebuilds' | 'rebuildBytesPerSecond'>>;
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
  /** Regions that serve. */
  regions: number;
  /** Regions by state (file-backed regions found at start may be loading or have failed). */
  regionStates: Record<RegionState, number>;
  /** The merger's statistics and progress, with the region its scan is in (null between scans). */
  merger: (MergerStats & { scanRegion: string | null }) | null;
  nbd: NbdStats;
}

export class Appliance {
  readonly pool: FramePool;
  readonly merger: SamePageMerger | undefined;
  readonly registry: RegionRegistry;
  /** Names claimed by fabric clients (names.ts); in DATA_DIR/names.json when there is one. */
  readonly names: NameTable;
  readonly nbdServer: NbdServer;
  readonly logger: Logger | undefined;
  nbdAddress: Endpoint = { host: HOST_DEFAULT, port: 0 };
  httpAddress: Endpoint = { host: HOST_DEFAULT, port: 0 };
  /** Settles when every region found in the data directory has loaded or failed. */
  loaded: Promise<void> = Promise.resolve();
  private http: FastifyInstance | undefined;
  private stopping: Promise<StopReport> | undefined;
  /** Set by stop(): background loading ends at the next chunk. */
  private stopRequested = false;
  private readonly tlsOptions: ApplianceOptions['tls'];
  private auth: AdminAuth | undefined;
  private https = false;
  private token = '';
  private tokenFile: string | undefined;
  /** CA certificates trusted when calling other appliances (migration). */
  readonly peerCa: string | Buffer | undefined;
  /** Warnings about how the appliance is exposed (also logged at start). */
  warnings: string[] = [];
  /** Its key in the fleet's etcd, when started with `etcd` (src/catalog/registration.ts). */
  registration: ApplianceRegistration | undefined;
  /** Its fleet controller candidate, when started with `etcd` (src/catalog/controller.ts). */
  controller: FleetController | undefined;
  /** When it started (ms since the epoch): the dashboard's uptime, memfabric_start_time_seconds. */
  readonly startedAt = Date.now();

  private constructor(options: ApplianceOptions) {
    const memory = parseSize(options.memory ?? MEMORY_DEFAULT, 'memory');
    this.pool = new FramePool({
      capacity: memory,
      ...(options.pageSize ? { pageSize: options.pageSize } : {}),
    });
    const merge = options.merge ?? {};
    if (merge !== false) {
      checkCpuShare(merge.cpuShare ?? MERGE_CPU_SHARE_DEFAULT, 'merge.cpuShare');
      checkSliceMs(merge.sliceMs ?? MERGE_SLICE_MS_MAX, 'merge.sliceMs');
    }
    this.merger =
      merge === false ? undefined : new SamePageMerger(this.pool, { quietEpochs: merge.quietEpochs ?? 1 });
    this.registry = new RegionRegistry({
      pool: this.pool,
      ...(this.merger ? { merger: this.merger } : {}),
      ...(options.dataDir ? { dataDir: options.dataDir } : {}),
      ...(options.fileLayer ? { layer: options.fileLayer } : {}),
    });
    this.names = new NameTable(options.dataDir, options.fileLayer ?? nodeFileLayer);
    this.logger = options.logger;
    this.tlsOptions = options.tls;
    this.peerCa = options.peerCa;
    const log = options.logger;
    // Lines about a connection name its export; the region's tenant is added here.
    const fieldsOf = (fields: Record<string, unknown> | undefined): Record<string, unknown> => {
      if (fields === undefined) return { component: 'nbd' };
      const name = fields.export;
      const tenant = typeof name === 'string' ? this.registry.find(name)?.tenant : undefined;
      return { component: 'nbd', ...fields, ...(tenant !== undefined ? { tenant } : {}) };
    };
    const enospc = log ? new EnospcLog(log) : undefined;
    this.nbdServer = new NbdServer({
      ...options.nbdLimits,
      directory: this.registry,
      ...(options.tls ? { tls: options.tls } : {}),
      logger: {
        debug: (message, fields) => log?.debug(fieldsOf(fields), message),
        info: (message, fields) => log?.info(fieldsOf(fields), message),
        warn: (message, fields) => log?.warn(fieldsOf(fields), message),
        error: (message, fields) => log?.error(fieldsOf(fields), message),
      },
      ...(enospc ? { onRequestError: (errno, exp) => enospc.answered(errno, exp) } : {}),
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

  /** The region the merger's scan is in now, or null between scans. */
  private scanRegion(): string | null {
    const space = this.merger?.scanningSpace;
    if (space === undefined) return null;
    return this.registry.all().find((region) => region.space === space)?.name ?? null;
  }

  stats(): ApplianceStats {
    const pool = this.pool;
    let logicalBytes = 0;
    for (const region of this.registry.all()) logicalBytes += region.stats().residentBytes;
    const regionStates: Record<RegionState, number> = {
      loading: 0,
      ready: this.registry.size,
      failed: 0,
      corrupt: 0,
    };
    for (const pending of this.registry.pendingRegions()) regionStates[pending.state]++;
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
      regionStates,
      merger: this.merger ? { ...this.merger.stats(), scanRegion: this.scanRegion() } : null,
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

  /**
   * Stops listening, ends connections, stops loading, saves file-backed regions and frees
   * memory. Every region is saved whatever happens to the others; the report lists those
   * whose final save failed (each is also logged at error level).
   */
  stop(): Promise<StopReport> {
    this.stopping ??= (async () => {
      await this.controller?.stop(); // resigns: a standby leads at once
      await this.registration?.stop(); // first: clients stop placing shards here
      this.stopRequested = true;
      this.merger?.stop();
      await Promise.allSettled([this.nbdServer.close(), this.http?.close()]);
      await this.loaded;
      await this.names.close();
      const unsaved = await this.registry.close();
      for (const { name, error } of unsaved) {
        this.logger?.error({ region: name, err: error }, 'region not saved');
      }
      this.merger?.destroy();
      this.logger?.info({ unsaved: unsaved.map((u) => u.name) }, 'appliance stopped');
      return { unsaved };
    })();
    return this.stopping;
  }

  private async open(options: ApplianceOptions): Promise<void> {
    // First the data directory (the token file may live in it), then a bad token or tenant
    // file stops the start before any region is loaded.
    if (options.dataDir) await prepareDataDir(options.dataDir);
    const access = await loadAdminAuth(options, this.logger);
    this.auth = access.auth;
    this.token = access.token;
    this.tokenFile = access.tokenFile;
    if (options.dataDir) {
      await this.names.load();
      for (const region of await this.registry.scanDataDir()) {
        if (region.state !== 'loading') this.logFailed(region.name, region.state, region.error);
      }
    }
    if (options.defaultRegion !== false) {
      const name = options.defaultRegion?.name ?? DEFAULT_REGION_NAME;
      if (!this.registry.has(name)) {
        await this.registry.create({
          name,
          size: options.defaultRegion?.size ?? this.pool.capacity * this.pool.pageSize,
        });
      }
      this.registry.defaultRegion = name;
    }
    const merge = options.merge ?? {};
    if (merge !== false && this.merger) {
      // Timed slices: each holds the event loop (and so every NBD client) for at most
      // MERGE_SLICE_MS_MAX, and the sleeps between them keep merging to its share of a core.
      this.merger.start({
        cpuShare: merge.cpuShare ?? MERGE_CPU_SHARE_DEFAULT,
        sliceMs: merge.sliceMs ?? MERGE_SLICE_MS_MAX,
      });
    }
    const nbdPort = options.nbd?.port ?? NBD_PORT_DEFAULT;
    const nbdHost = options.nbd?.host ?? HOST_DEFAULT;
    this.nbdAddress = await this.nbdServer
      .listen(nbdPort, nbdHost)
      .catch((error: unknown) => Promise.reject(listenFailed(error, 'NBD', nbdHost, nbdPort, '--nbd')));
    const httpPort = options.http?.port ?? HTTP_PORT_DEFAULT;
    const httpHost = options.http?.host ?? HOST_DEFAULT;
    this.https = options.httpTls !== undefined;
    this.warnings = exposureWarnings({
      http: { host: httpHost, tls: this.https },
      nbd: { host: this.nbdAddress.host, tls: this.nbdServer.tlsMode },
    });
    for (const warning of this.warnings) this.logger?.warn({ component: 'security' }, warning);
    this.http = createAdminApi(this, options.httpTls);
    await this.http
      .listen({ port: httpPort, host: httpHost })
      .catch((error: unknown) =>
        Promise.reject(listenFailed(error, 'the admin API', httpHost, httpPort, '--http')),
      );
    const address = this.http.server.address();
    this.httpAddress = {
      host: httpHost,
      port: typeof address === 'object' && address !== null ? address.port : httpPort,
    };
    if (options.etcd) {
      this.registration = await ApplianceRegistration.start(this, {
        endpoints: options.etcd,
        ...(options.etcdTtl !== undefined ? { ttlSeconds: options.etcdTtl } : {}),
        ...(options.dataDir ? { dataDir: options.dataDir } : {}),
        ...(this.logger ? { logger: this.logger } : {}),
      });
      if (options.controller !== false) {
        this.controller = FleetController.start({
          ...(typeof options.controller === 'object' ? options.controller : {}),
          etcd: options.etcd,
          token: this.token,
          ...(this.peerCa !== undefined ? { ca: this.peerCa } : {}),
          ...(options.etcdTtl !== undefined ? { ttlSeconds: options.etcdTtl } : {}),
          id: `${this.registration.id}@${this.httpUrl}`,
          ...(this.logger ? { logger: this.logger } : {}),
        });
      }
    }
    // Regions load after the listeners are up: a client asking for one still loading is
    // told so (NBD option error, MF_LOADING) and can retry; the others serve meanwhile.
    this.loaded = this.registry
      .loadPending({
        cancelled: () => this.stopRequested,
        ...(options.onLoadProgress ? { progress: options.onLoadProgress } : {}),
        loaded: (region) =>
          this.logger?.info(
            {
              region: region.name,
              size: region.size,
              file: region.backing?.imagePath,
              load: region.backing?.loadReport,
            },
            'region loaded',
          ),
        failed: (region) => this.logFailed(region.name, region.state, region.error),
      })
      .catch((error: unknown) => {
        // Per-region failures are caught inside; this is a bug, but must not end the process.
        this.logger?.error({ err: error }, 'loading regions stopped');
      });
  }

  private logFailed(name: string, state: string, error: { code: string; message: string } | null): void {
    this.logger?.error({ region: name, state, error }, 'region not loaded');
  }
}

/** What stop() reports: the regions whose final save failed (empty: all saved). */
export interface StopReport {
  unsaved: UnsavedRegion[];
}

/**
 * Creates the data directory if missing and proves files can be made in it, so a bad
 * `--data-dir` fails the start with its path and a remedy rather than a raw error later.
 */
async function prepareDataDir(dir: string): Promise<void> {
  const refuse = (why: string, cause?: unknown): MemfabricError =>
    new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `--data-dir ${dir} cannot be used: ${why}; give a directory the appliance may create and write ` +
        '(it is created if missing), or remove what is in the way',
      { cause },
    );
  try {
    await mkdir(dir, { recursive: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw refuse(
      code === 'EEXIST' || code === 'ENOTDIR'
        ? 'a file is in the way (it, or a parent, is not a directory)'
        : `it cannot be created (${code ?? String(error)})`,
      error,
    );
  }
  if (!(await stat(dir)).isDirectory()) throw refuse('it is not a directory');
  const probe = join(dir, `.memfabric-probe-${process.pid}`);
  try {
    await writeFile(probe, 'probe');
  } catch (error) {
    throw refuse(
      `files cannot be created in it (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
      error,
    );
  } finally {
    await rm(probe, { force: true });
  }
}

/**
 * A listening socket refused at start, as a typed error saying what to do: the usual cause is a
 * second appliance (or any program) on the default ports, which Node reports as a bare EADDRINUSE.
 */
function listenFailed(error: unknown, what: string, host: string, port: number, flag: string): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const at = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const why =
    code === 'EADDRINUSE'
      ? 'the address is in use: another appliance or program listens there'
      : code === 'EACCES'
        ? 'permission denied (ports below 1024 need privileges)'
        : code === 'EADDRNOTAVAIL'
          ? 'no network interface of this machine has that address'
          : undefined;
  if (why === undefined) return error;
  return new MemfabricError(
    ErrorCodes.LISTEN_FAILED,
    `cannot listen for ${what} on ${at}: ${why}; stop it or choose another address with ${flag} HOST:PORT (:0 picks a free port)`,
    { cause: error },
  );
}
