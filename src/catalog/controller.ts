/**
 * The fleet controller: rebuilds every region that lost a shard onto live appliances, without
 * anyone calling rebuild (docs/fleet.md, "The controller").
 *
 * Election. Every candidate campaigns with etcd's election API under
 * /memfabric/v1/controller/election/leader/, holding its own lease (TTL like an appliance's
 * registration). One is leader; the others wait. The leader's lease expiring (it died, or lost
 * etcd for longer than the TTL) or its resigning (a clean stop) elects the next candidate. A
 * candidate whose campaign fails (its lease lost) stops acting at once and campaigns again.
 *
 * What the leader rebuilds. On election, on every appliance 'down' event from discovery, and
 * every `scanIntervalMs`, it reads the catalog and queues every `ready` region with a shard that
 * is not `live` or whose appliance is not live in etcd. For each (at most
 * `maxConcurrentRebuilds` at once):
 *   - more shards gone than the redundancy covers: reported failed with MF_DATA_LOST, never
 *     retried (unless an appliance comes back and fewer shards are gone);
 *   - a client has the region open (a live shard has NBD connections): the controller must not
 *     write it too (two writers corrupt parity; only the owner holds the stripe locks), so it
 *     puts a rebuild request (rebuild-requests.ts) and the owner rebuilds; the controller follows
 *     its progress and waits for the request to go;
 *   - nobody has it open: the controller opens it (fleet-mode Fabric), rebuilds and detaches.
 * A rebuild that fails is retried with backoff (doubling from `retryMs`, at most
 * RETRY_MS_MAX), never in a loop. Done means the catalog lists only live shards on live
 * appliances.
 *
 * Status. The leader writes /memfabric/v1/controller/status (JSON: ControllerStatus) at most
 * every STATUS_MS, and logs each region's rebuild start and finish at info.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Campaign, Election, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import { moveShard, planRebalance, type ShardMove } from './rebalance.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { ApplianceDirectory } from '../fabric/directory.js';
import { Fabric } from '../fabric/fabric.js';
import type { ExternalRegion, Redundancy } from '../fabric/external-region.js';
import type { NbdClientTls } from '../nbd/index.js';
import type { RegionDescriptor } from './descriptor.js';
import { ApplianceDiscovery } from './etcd-discovery.js';
import { EtcdCatalog } from './etcd-catalog.js';
import { EtcdConnection, EtcdKeys, checkEndpoints, type EtcdOptions } from './etcd.js';
import { parseRebuildRequest, rebuildRequestKey, type RebuildRequest } from './rebuild-requests.js';
import { REGISTRATION_TTL_SECONDS_DEFAULT } from './registration.js';

export const CONTROLLER_STATUS_KEY = `${EtcdKeys.controller}status`;
export const CONTROLLER_ELECTION = 'leader';
export const SCAN_INTERVAL_MS_DEFAULT = 10_000;
/** First wait before a failed region is tried again (doubles per failure). */
export const RETRY_MS_DEFAULT = 2000;
const RETRY_MS_MAX = 120_000;
/** The status key is written at most this often. */
const STATUS_MS = 500;
/** An owner that shows no progress for this long is given up on (the request is retried later). */
export const OWNER_SILENCE_MS_DEFAULT = 60_000;
/** A campaign failing again and again (etcd away) is logged at most this often. */
const CAMPAIGN_WARN_MS = 30_000;
/** How often a request handed to an owner is looked at. */
const FOLLOW_MS = 200;
/** Completed and failed entries kept in the status. */
const HISTORY_MAX = 50;
/** How long stop() waits for the term to end and the resignation to land before it cuts them off. */
const STOP_GRACE_MS = 3000;

export interface FleetControllerOptions {
  /** The etcd members (client URLs) or full etcd options. */
  etcd: string[] | EtcdOptions;
  /** An admin token accepted by every appliance (the controller creates and reads regions). */
  token?: string;
  ca?: string | Buffer;
  tls?: NbdClientTls;
  /** This candidate's name in the election and the status (default host:pid:random). */
  id?: string;
  /** Lease TTL of the campaign, whole seconds (default 5, as registration). */
  ttlSeconds?: number;
  /** Regions rebuilt at once (default 1). */
  maxConcurrentRebuilds?: number;
  /** Refill rate per shard in bytes per second (default unlimited). */
  rebuildBytesPerSecond?: number;
  scanIntervalMs?: number;
  retryMs?: number;
  ownerSilenceMs?: number;
  requestTimeoutMs?: number;
  /**
   * Move shards onto an appliance that joins until it holds its share (rebalance.ts).
   * Default true.
   */
  rebalance?: boolean;
  logger?: Pick<Logger, 'info' | 'warn' | 'error'>;
}

export interface RebuildInProgress {
  tenant: string;
  name: string;
  /** Who writes the region: its owner (on request) or this controller. */
  by: 'owner' | 'controller';
  lostAppliances: string[];
  startedAt: number;
  bytesDone: number;
  bytesTotal: number;
  /** Bytes per second since the start. */
  rate: number;
}

export interface ControllerStatus {
  leader: string;
  /** When this leader was elected (ms since the epoch). */
  since: number;
  at: number;
  queue: Array<{ tenant: string; name: string }>;
  inProgress: RebuildInProgress[];
  completed: Array<{
    tenant: string;
    name: string;
    by: 'owner' | 'controller';
    ms: number;
    generation: number;
    at: number;
  }>;
  /** Shards moved onto appliances that joined (newest last). */
  rebalanced: Array<ShardMove & { at: number }>;
  failed: Array<{
    tenant: string;
    name: string;
    reason: string;
    code?: string;
    attempts: number;
    /** When it is tried again (absent: not retried, e.g. MF_DATA_LOST). */
    retryAt?: number;
    at: number;
  }>;
}

interface Failure {
  attempts: number;
  retryAt: number;
  /**
   * Past its redundancy (MF_DATA_LOST): not tried again while this region (id) has at least
   * this many shards lost or on dead appliances, i.e. until an appliance comes back. (Not
   * keyed on the generation: the failed attempt itself records the losses it found.)
   */
  dataLost?: { regionId: string; lostShards: number };
}

type Role = 'candidate' | 'leader' | 'stopped';

const regionKey = (tenant: string, name: string): string => `${tenant}/${name}`;

/** How many shards the redundancy lets a region lose. */
export function tolerance(redundancy: Redundancy): number {
  if (redundancy === 'none') return 0;
  return 'copies' in redundancy ? redundancy.copies - 1 : redundancy.parity;
}

/** The appliances of the region's shards that need a rebuild (empty: healthy). */
export function lostAppliances(descriptor: RegionDescriptor, live: ReadonlySet<string>): string[] {
  return descriptor.shards
    .filter((shard) => shard.state !== 'live' || !live.has(shard.appliance))
    .map((shard) => shard.appliance);
}

export class FleetController {
  readonly id: string;
  private readonly options: FleetControllerOptions;
  private readonly etcd: EtcdOptions;
  private readonly connection: EtcdConnection;
  private readonly logger: Pick<Logger, 'info' | 'warn' | 'error'> | undefined;
  private readonly maxConcurrent: number;
  private readonly scanIntervalMs: number;
  private readonly retryMs: number;
  private readonly ownerSilenceMs: number;
  private role: Role = 'candidate';
  private campaign: Campaign | undefined;
  private election: Election | undefined;
  /** Leader term state (reset at each election). */
  private term: Term | undefined;
  private readonly roleWaiters = new Set<() => void>();
  private stopping: Promise<void> | undefined;
  private recampaignTimer: NodeJS.Timeout | undefined;
  private lastCampaignWarn = 0;

  private constructor(options: FleetControllerOptions) {
    this.options = options;
    this.etcd = Array.isArray(options.etcd)
      ? { endpoints: checkEndpoints(options.etcd) }
      : { ...options.etcd, endpoints: checkEndpoints(options.etcd.endpoints) };
    this.connection = new EtcdConnection(this.etcd);
    this.id = options.id ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    this.logger = options.logger;
    this.maxConcurrent = options.maxConcurrentRebuilds ?? 1;
    this.scanIntervalMs = options.scanIntervalMs ?? SCAN_INTERVAL_MS_DEFAULT;
    this.retryMs = options.retryMs ?? RETRY_MS_DEFAULT;
    this.ownerSilenceMs = options.ownerSilenceMs ?? OWNER_SILENCE_MS_DEFAULT;
    const ttl = options.ttlSeconds ?? REGISTRATION_TTL_SECONDS_DEFAULT;
    if (!Number.isInteger(ttl) || ttl < 1) {
      throw invalidArgument(
        `the controller's lease TTL must be a whole number of seconds, 1 or more (got ${ttl})`,
      );
    }
    if (!Number.isInteger(this.maxConcurrent) || this.maxConcurrent < 1) {
      throw invalidArgument(
        `maxConcurrentRebuilds must be a whole number, 1 or more (got ${this.maxConcurrent})`,
      );
    }
    const rate = options.rebuildBytesPerSecond;
    if (rate !== undefined && !(rate > 0)) {
      throw invalidArgument(`rebuildBytesPerSecond must be above 0 (got ${rate}); leave it out for no limit`);
    }
    if (!(this.scanIntervalMs > 0) || !(this.retryMs > 0) || !(this.ownerSilenceMs > 0)) {
      throw invalidArgument('scanIntervalMs, retryMs and ownerSilenceMs must be above 0');
    }
  }

  /** Starts campaigning (in the background: this resolves at once, leader or not). */
  static start(options: FleetControllerOptions): FleetController {
    const controller = new FleetController(options);
    controller.runCampaign();
    return controller;
  }

  get isLeader(): boolean {
    return this.role === 'leader';
  }

  /** The leader's view (undefined while this candidate is not the leader). */
  status(): ControllerStatus | undefined {
    return this.term?.snapshot();
  }

  /** Resolves once this candidate leads (or was stopped). */
  async elected(): Promise<void> {
    while (this.role === 'candidate') await new Promise<void>((resolve) => this.roleWaiters.add(resolve));
  }

  /**
   * Resigns (a standby takes over at once) and stops. Rebuilds it runs are cut off: a region
   * left with a shard `rebuilding` is rebuilt again by the next leader.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearTimeout(this.recampaignTimer);
      this.setRole('stopped');
      // Ending the term and resigning talk to etcd, whose calls retry for up to retryMs while
      // it fails over: an appliance stopping must not wait that long. Past STOP_GRACE_MS the
      // connection is closed under them (their calls reject), and the campaign's lease expires
      // by itself, electing the next leader a TTL later instead of at once.
      const graceful = (async () => {
        await this.term?.end();
        this.term = undefined;
        await this.campaign?.resign().catch(() => undefined);
      })().catch(() => undefined);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        graceful,
        new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_GRACE_MS))),
      ]);
      clearTimeout(timer);
      await cancelLeftoverWatches(this.election);
      this.connection.close();
    })();
    return this.stopping;
  }

  private setRole(role: Role): void {
    if (this.role === 'stopped') return;
    this.role = role;
    for (const waiter of this.roleWaiters) waiter();
    this.roleWaiters.clear();
  }

  private runCampaign(): void {
    if (this.role === 'stopped') return;
    const ttl = this.options.ttlSeconds ?? REGISTRATION_TTL_SECONDS_DEFAULT;
    this.election ??= this.connection.client
      .namespace(EtcdKeys.controller)
      .election(CONTROLLER_ELECTION, ttl);
    const campaign = this.election.campaign(this.id);
    this.campaign = campaign;
    campaign.on('elected', () => {
      if (this.campaign !== campaign || this.role !== 'candidate') return;
      this.setRole('leader');
      this.logger?.info({ component: 'controller', id: this.id }, 'controller elected leader');
      this.term = new Term(this, campaign);
      this.term.begin();
    });
    campaign.on('error', (error: Error) => {
      if (this.campaign !== campaign || this.role === 'stopped') return;
      // The campaign's lease is gone: another candidate may lead now, so stop acting at once.
      // Logged on the first failure, then at most every CAMPAIGN_WARN_MS (etcd away for long).
      const now = Date.now();
      if (now - this.lastCampaignWarn >= CAMPAIGN_WARN_MS) {
        this.lastCampaignWarn = now;
        this.logger?.warn(
          { component: 'controller', reason: error.message },
          'controller campaign lost; campaigning again',
        );
      }
      const term = this.term;
      this.term = undefined;
      void term?.end();
      this.setRole('candidate');
      void campaign.resign().catch(() => undefined);
      this.recampaignTimer = setTimeout(() => this.runCampaign(), 1000);
      this.recampaignTimer.unref();
    });
  }

  /** @internal for Term */
  get settings(): {
    etcd: EtcdOptions;
    connection: EtcdConnection;
    options: FleetControllerOptions;
    logger: Pick<Logger, 'info' | 'warn' | 'error'> | undefined;
    maxConcurrent: number;
    scanIntervalMs: number;
    retryMs: number;
    ownerSilenceMs: number;
  } {
    return {
      etcd: this.etcd,
      connection: this.connection,
      options: this.options,
      logger: this.logger,
      maxConcurrent: this.maxConcurrent,
      scanIntervalMs: this.scanIntervalMs,
      retryMs: this.retryMs,
      ownerSilenceMs: this.ownerSilenceMs,
    };
  }

  /** @internal whether `campaign` still leads (Term checks before each action). */
  leads(campaign: Campaign): boolean {
    return this.role === 'leader' && this.campaign === campaign;
  }
}

/** A watch cancel that etcd does not answer (a member down) is not waited for longer. */
const CANCEL_MS_MAX = 1000;

/**
 * A standby's Campaign watches the key of the candidate before it and does not cancel that watch
 * when it resigns; a watch left attached reconnects forever after the client is closed (its
 * timers keep the process alive: an appliance would not exit on SIGTERM). So, on stop, every
 * watch still attached to the election's namespace is cancelled, each within CANCEL_MS_MAX.
 */
async function cancelLeftoverWatches(election: Election | undefined): Promise<void> {
  const internals = election as unknown as
    { namespace?: { watchManager?: { watchers?: Watcher[] } } } | undefined;
  const watchers = [...(internals?.namespace?.watchManager?.watchers ?? [])];
  await Promise.allSettled(
    watchers.map((watcher) =>
      Promise.race([
        watcher.cancel(),
        new Promise<void>((resolve) => setTimeout(resolve, CANCEL_MS_MAX).unref()),
      ]),
    ),
  );
}

/** One leadership term: discovery, the queue, the workers and the status writer. */
class Term {
  private readonly controller: FleetController;
  private readonly campaign: Campaign;
  private readonly s: FleetController['settings'];
  private readonly since = Date.now();
  private discovery: ApplianceDiscovery | undefined;
  private catalog: EtcdCatalog | undefined;
  private fabric: Fabric | undefined;
  private directory: ApplianceDirectory | undefined;
  private readonly queue = new Map<string, { tenant: string; name: string }>();
  private readonly inProgress = new Map<string, RebuildInProgress>();
  private readonly completed: ControllerStatus['completed'] = [];
  private readonly failures = new Map<string, Failure>();
  private readonly failed = new Map<string, ControllerStatus['failed'][number]>();
  private workers = 0;
  private ended = false;
  private scanning: Promise<void> | undefined;
  private rescan = false;
  private scanTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private statusWritten = 0;
  private statusWriting: Promise<void> | undefined;
  private readonly running = new Set<Promise<void>>();
  /** Regions this term opened to rebuild: detached at the end of the term (cuts the rebuild). */
  private readonly opened = new Set<ExternalRegion>();
  private readonly rebalanced: ControllerStatus['rebalanced'] = [];
  /** Rebalances run one after another (each waits for the one before). */
  private rebalancing: Promise<void> = Promise.resolve();

  constructor(controller: FleetController, campaign: Campaign) {
    this.controller = controller;
    this.campaign = campaign;
    this.s = controller.settings;
  }

  private get active(): boolean {
    return !this.ended && this.controller.leads(this.campaign);
  }

  begin(): void {
    void (async () => {
      const { etcd, options } = this.s;
      try {
        this.discovery = await ApplianceDiscovery.start({
          ...etcd,
          ...(this.s.logger ? { logger: this.s.logger } : {}),
        });
        if (this.ended) return this.discovery.close();
        this.catalog = new EtcdCatalog(etcd);
        const access = {
          ...(options.token !== undefined ? { token: options.token } : {}),
          ...(options.ca !== undefined ? { ca: options.ca } : {}),
        };
        const timeout = options.requestTimeoutMs ?? 5000;
        this.directory = new ApplianceDirectory([], timeout, access, true);
        this.fabric = new Fabric({
          etcd,
          ...access,
          requestTimeoutMs: timeout,
          ...(options.tls ? { tls: options.tls } : {}),
          warn: (message) => this.s.logger?.warn({ component: 'controller' }, message),
        });
        this.discovery.onChange((event) => {
          if (event.type === 'down') {
            this.s.logger?.info(
              { component: 'controller', appliance: event.appliance.url },
              'appliance down',
            );
            this.scan();
          } else {
            this.directory?.add(event.appliance.url);
            if (event.type === 'up') this.rebalance(event.appliance.url);
          }
        });
        for (const record of this.discovery.live()) this.directory.add(record.url);
        this.scan();
        this.writeStatus();
      } catch (error) {
        this.s.logger?.error(
          { component: 'controller', reason: (error as Error).message },
          'controller could not start its term',
        );
        this.scanTimer = setTimeout(() => this.begin(), this.s.retryMs);
        this.scanTimer.unref();
      }
    })();
  }

  async end(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.scanTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.statusTimer);
    await Promise.allSettled([...this.opened].map((region) => region.detach()));
    await this.scanning?.catch(() => undefined);
    await Promise.allSettled(this.running);
    await this.statusWriting?.catch(() => undefined);
    this.discovery?.close();
    await this.catalog?.close();
    await this.fabric?.close().catch(() => undefined);
  }

  snapshot(): ControllerStatus {
    const now = Date.now();
    return {
      leader: this.controller.id,
      since: this.since,
      at: now,
      queue: [...this.queue.values()],
      inProgress: [...this.inProgress.values()].map((p) => ({
        ...p,
        rate: Math.round(p.bytesDone / Math.max(0.001, (now - p.startedAt) / 1000)),
      })),
      completed: [...this.completed],
      rebalanced: [...this.rebalanced],
      failed: [...this.failed.values()],
    };
  }

  /** Reads the catalog and queues what needs a rebuild; runs one scan at a time (again if asked meanwhile). */
  private scan(): void {
    if (!this.active) return;
    if (this.scanning) {
      this.rescan = true;
      return;
    }
    clearTimeout(this.scanTimer);
    this.scanning = this.scanOnce()
      .catch((error: unknown) =>
        this.s.logger?.warn(
          { component: 'controller', reason: (error as Error).message },
          'catalog scan failed',
        ),
      )
      .finally(() => {
        this.scanning = undefined;
        if (!this.active) return;
        if (this.rescan) {
          this.rescan = false;
          this.scan();
          return;
        }
        this.scanTimer = setTimeout(() => this.scan(), this.s.scanIntervalMs);
        this.scanTimer.unref();
      });
  }

  private async scanOnce(): Promise<void> {
    const live = this.liveUrls();
    const entries = await this.catalog!.list();
    const now = Date.now();
    let nextRetry = Infinity;
    for (const { descriptor } of entries) {
      if (descriptor.state !== 'ready') continue;
      const key = regionKey(descriptor.tenant, descriptor.name);
      const lost = lostAppliances(descriptor, live);
      if (lost.length === 0) {
        this.failures.delete(key);
        this.failed.delete(key);
        continue;
      }
      if (this.queue.has(key) || this.inProgress.has(key)) continue;
      const failure = this.failures.get(key);
      if (failure?.dataLost?.regionId === descriptor.id && lost.length >= failure.dataLost.lostShards)
        continue;
      if (failure && failure.retryAt > now) {
        nextRetry = Math.min(nextRetry, failure.retryAt);
        continue;
      }
      this.queue.set(key, { tenant: descriptor.tenant, name: descriptor.name });
    }
    if (nextRetry !== Infinity) {
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.scan(), Math.max(0, nextRetry - Date.now()) + 10);
      this.retryTimer.unref();
    }
    this.pump();
    this.writeStatus();
  }

  /** Queues moving shards onto `joined` (an appliance that just registered). */
  private rebalance(joined: string): void {
    if (this.s.options.rebalance === false) return;
    const run = this.rebalancing.then(() => this.rebalanceOnto(joined));
    this.rebalancing = run.catch((error: unknown) =>
      this.s.logger?.warn(
        { component: 'controller', appliance: joined, reason: (error as Error).message },
        'rebalance failed',
      ),
    );
    this.running.add(this.rebalancing);
    void this.rebalancing.finally(() => this.running.delete(this.rebalancing));
  }

  private async rebalanceOnto(joined: string): Promise<void> {
    if (!this.active) return;
    const moves = planRebalance(await this.catalog!.list(), this.liveUrls(), joined);
    for (const move of moves) {
      if (!this.active) return;
      this.s.logger?.info({ component: 'controller', ...move }, 'moving a shard to an appliance that joined');
      await moveShard(move, this.directory!, this.fabric!, {
        ...(this.s.options.token !== undefined ? { token: this.s.options.token } : {}),
        readPlacement: async () => {
          const shard = (await this.catalog!.get(move.tenant, move.name))?.descriptor.shards[move.shard];
          return shard && { appliance: shard.appliance, region: shard.region };
        },
      });
      this.rebalanced.push({ ...move, at: Date.now() });
      if (this.rebalanced.length > HISTORY_MAX) this.rebalanced.shift();
      this.s.logger?.info({ component: 'controller', ...move }, 'shard moved');
      this.writeStatus();
    }
  }

  private liveUrls(): Set<string> {
    return new Set(this.discovery!.live().map((record) => record.url));
  }

  /** Starts queued rebuilds up to the concurrency limit. */
  private pump(): void {
    while (this.active && this.workers < this.s.maxConcurrent && this.queue.size > 0) {
      const [key, region] = this.queue.entries().next().value as [string, { tenant: string; name: string }];
      this.queue.delete(key);
      this.workers++;
      const run = this.rebuildRegion(key, region.tenant, region.name).finally(() => {
        this.workers--;
        this.running.delete(run);
        this.pump();
        this.writeStatus();
      });
      this.running.add(run);
    }
  }

  private async rebuildRegion(key: string, tenant: string, name: string): Promise<void> {
    const entry = await this.catalog!.get(tenant, name).catch(() => undefined);
    if (!entry || entry.descriptor.state !== 'ready' || !this.active) return;
    const descriptor = entry.descriptor;
    const live = this.liveUrls();
    const lost = lostAppliances(descriptor, live);
    if (lost.length === 0) return;
    if (lost.length > tolerance(descriptor.redundancy)) {
      this.fail(
        key,
        descriptor,
        new MemfabricError(
          ErrorCodes.DATA_LOST,
          `region ${key} has ${lost.length} of ${descriptor.shards.length} shards lost or on dead appliances, more than its redundancy covers; it is not rebuilt`,
        ),
        lost.length,
      );
      return;
    }
    const progress: RebuildInProgress = {
      tenant,
      name,
      by: 'controller',
      lostAppliances: lost,
      startedAt: Date.now(),
      bytesDone: 0,
      bytesTotal: 0,
      rate: 0,
    };
    try {
      progress.by = (await this.isOpen(descriptor, live)) ? 'owner' : 'controller';
      this.inProgress.set(key, progress);
      this.s.logger?.info(
        { component: 'controller', region: key, by: progress.by, lost, generation: descriptor.generation },
        'region rebuild started',
      );
      this.writeStatus();
      if (progress.by === 'owner') await this.askOwner(descriptor, lost, progress);
      else await this.rebuildHere(descriptor, progress);
      const after = await this.catalog!.get(tenant, name);
      const still = after ? lostAppliances(after.descriptor, this.liveUrls()) : [];
      if (after && still.length > 0) {
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          `region ${key} is still degraded after its rebuild (shards on ${still.join(', ')}); tried again later`,
        );
      }
      const ms = Date.now() - progress.startedAt;
      this.completed.push({
        tenant,
        name,
        by: progress.by,
        ms,
        generation: after?.descriptor.generation ?? -1,
        at: Date.now(),
      });
      if (this.completed.length > HISTORY_MAX) this.completed.shift();
      this.failures.delete(key);
      this.failed.delete(key);
      this.s.logger?.info(
        { component: 'controller', region: key, by: progress.by, ms, bytes: progress.bytesDone },
        'region rebuild finished',
      );
    } catch (error) {
      const dataLost = error instanceof MemfabricError && error.code === ErrorCodes.DATA_LOST;
      this.fail(key, descriptor, error, dataLost ? lost.length : undefined);
    } finally {
      this.inProgress.delete(key);
    }
  }

  /** Records a failed attempt; `lostShards` given: MF_DATA_LOST (see Failure.dataLost), not retried. */
  private fail(key: string, descriptor: RegionDescriptor, error: unknown, lostShards?: number): void {
    const permanent = lostShards !== undefined;
    const previous = this.failures.get(key);
    const attempts = (previous?.attempts ?? 0) + 1;
    const wait = Math.min(RETRY_MS_MAX, this.s.retryMs * 2 ** (attempts - 1));
    const failure: Failure = {
      attempts,
      retryAt: Date.now() + wait,
      ...(permanent ? { dataLost: { regionId: descriptor.id, lostShards } } : {}),
    };
    this.failures.set(key, failure);
    const reason = (error as Error).message;
    this.failed.set(key, {
      tenant: descriptor.tenant,
      name: descriptor.name,
      reason,
      ...(error instanceof MemfabricError ? { code: error.code } : {}),
      attempts,
      ...(permanent ? {} : { retryAt: failure.retryAt }),
      at: Date.now(),
    });
    if (this.failed.size > HISTORY_MAX) this.failed.delete(this.failed.keys().next().value as string);
    (permanent ? this.s.logger?.error : this.s.logger?.warn)?.call(
      this.s.logger,
      { component: 'controller', region: key, attempts, reason, ...(permanent ? {} : { retryInMs: wait }) },
      permanent ? 'region cannot be rebuilt' : 'region rebuild failed; retrying later',
    );
    if (!permanent) {
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.scan(), wait + 10);
      this.retryTimer.unref();
    }
  }

  /** A client has the region open: a shard on a live appliance has NBD connections. */
  private async isOpen(descriptor: RegionDescriptor, live: ReadonlySet<string>): Promise<boolean> {
    const directory = this.directory!;
    const counts = await Promise.all(
      descriptor.shards
        .filter((shard) => shard.state !== 'lost' && live.has(shard.appliance))
        .map(async (shard) => {
          directory.add(shard.appliance);
          const found = await directory.getRegion(shard.appliance, shard.region).catch(() => undefined);
          return found && 'connections' in found ? found.connections : 0;
        }),
    );
    return counts.some((count) => count > 0);
  }

  /** Puts a rebuild request and follows it until the owner deletes it (or fails, or goes quiet). */
  private async askOwner(
    descriptor: RegionDescriptor,
    lost: string[],
    progress: RebuildInProgress,
  ): Promise<void> {
    const { connection, options } = this.s;
    const key = Buffer.from(rebuildRequestKey(descriptor.tenant, descriptor.name));
    const request: RebuildRequest = {
      tenant: descriptor.tenant,
      name: descriptor.name,
      regionId: descriptor.id,
      generation: descriptor.generation,
      lostAppliances: lost,
      ...(options.rebuildBytesPerSecond ? { bytesPerSecond: options.rebuildBytesPerSecond } : {}),
      requestedAt: Date.now(),
      by: this.controller.id,
    };
    // A request left by an earlier leader is replaced: its owner answered it or it is stale.
    await connection.run(
      `ask the owner of ${descriptor.tenant}/${descriptor.name} to rebuild`,
      () => connection.client.put(key).value(JSON.stringify(request)).exec(),
      'write',
    );
    let heardAt = Date.now();
    let lastDone = -1;
    for (;;) {
      if (!this.active) return;
      const answer = await connection.run('read a rebuild request', () =>
        connection.client.kv.range({ key }),
      );
      const kv = answer.kvs[0];
      if (!kv) return; // the owner finished (the caller checks the catalog)
      const stored = parseRebuildRequest(kv.value);
      if (stored?.failed) {
        await connection.client
          .delete()
          .key(key)
          .exec()
          .catch(() => undefined);
        throw new MemfabricError(
          stored.failed.code === ErrorCodes.DATA_LOST ? ErrorCodes.DATA_LOST : ErrorCodes.CONFLICT,
          `the owner of ${descriptor.tenant}/${descriptor.name} could not rebuild it: ${stored.failed.reason}`,
        );
      }
      if (stored?.progress && stored.progress.bytesDone !== lastDone) {
        lastDone = stored.progress.bytesDone;
        progress.bytesDone = stored.progress.bytesDone;
        progress.bytesTotal = stored.progress.bytesTotal;
        heardAt = Date.now();
        this.writeStatus();
      }
      if (Date.now() - heardAt > this.s.ownerSilenceMs) {
        await connection.client
          .delete()
          .key(key)
          .exec()
          .catch(() => undefined);
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          `the owner of ${descriptor.tenant}/${descriptor.name} did not answer its rebuild request within ${this.s.ownerSilenceMs} ms`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, FOLLOW_MS));
    }
  }

  /** Nobody has the region open: open it here, rebuild, detach. */
  private async rebuildHere(descriptor: RegionDescriptor, progress: RebuildInProgress): Promise<void> {
    const region = await this.fabric!.open(descriptor.name, { tenant: descriptor.tenant });
    this.opened.add(region);
    try {
      if (!this.active) return;
      await region.rebuild({
        ...(this.s.options.rebuildBytesPerSecond
          ? { bytesPerSecond: this.s.options.rebuildBytesPerSecond }
          : {}),
        onProgress: ({ bytesDone, bytesTotal }) => {
          progress.bytesDone = bytesDone;
          progress.bytesTotal = bytesTotal;
          this.writeStatus();
        },
      });
    } finally {
      this.opened.delete(region);
      await region.detach();
    }
  }

  /** Writes the status key now if the last write is STATUS_MS old, else once it is. */
  private writeStatus(): void {
    if (!this.active || this.statusTimer) return;
    const wait = Math.max(0, this.statusWritten + STATUS_MS - Date.now());
    this.statusTimer = setTimeout(() => {
      this.statusTimer = undefined;
      if (!this.active || this.statusWriting) {
        if (this.statusWriting) void this.statusWriting.finally(() => this.writeStatus());
        return;
      }
      this.statusWritten = Date.now();
      const { connection } = this.s;
      const value = JSON.stringify(this.snapshot());
      this.statusWriting = connection
        .run(
          'write the controller status',
          () => connection.client.put(CONTROLLER_STATUS_KEY).value(value).exec(),
          'write',
        )
        .then(() => undefined)
        .catch((error: unknown) =>
          this.s.logger?.warn(
            { component: 'controller', reason: (error as Error).message },
            'controller status not written',
          ),
        )
        .finally(() => {
          this.statusWriting = undefined;
        });
    }, wait);
    this.statusTimer.unref();
  }
}
