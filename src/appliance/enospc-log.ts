/**
 * ENOSPC answered to NBD clients, logged at warn: the appliance's memory is full and a client's
 * write failed, which the operator must hear about; but a client retrying in a loop must not
 * flood the log. So one line per region per ENOSPC_LOG_INTERVAL_MS at most: the first ENOSPC
 * logs at once, later ones within the interval are counted and reported by the next line
 * (`suppressed`). Called on the data path for errors only; a success costs nothing here.
 */
import type { Logger } from 'pino';
import { ENOSPC, type NbdExport } from '../nbd/index.js';
import { Region } from './region.js';

export const ENOSPC_LOG_INTERVAL_MS = 10_000;

interface RegionEnospc {
  lastLoggedAt: number;
  suppressed: number;
}

export class EnospcLog {
  private readonly byRegion = new Map<string, RegionEnospc>();

  constructor(
    private readonly logger: Pick<Logger, 'warn'>,
    private readonly intervalMs = ENOSPC_LOG_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** An NBD request of `exp` was answered with `errno`. */
  answered(errno: number, exp: NbdExport): void {
    if (errno !== ENOSPC) return;
    const region = exp instanceof Region ? exp.name : exp.description;
    const now = this.now();
    const seen = this.byRegion.get(region);
    if (seen !== undefined && now - seen.lastLoggedAt < this.intervalMs) {
      seen.suppressed++;
      return;
    }
    const suppressed = seen?.suppressed ?? 0;
    this.byRegion.set(region, { lastLoggedAt: now, suppressed: 0 });
    // Forget regions that have been quiet for a while, so deleted regions do not pile up.
    if (this.byRegion.size > 1024) {
      for (const [name, entry] of this.byRegion) {
        if (now - entry.lastLoggedAt >= this.intervalMs) this.byRegion.delete(name);
      }
    }
    this.logger.warn(
      {
        component: 'nbd',
        region,
        ...(exp instanceof Region ? { tenant: exp.tenant } : {}),
        suppressed,
        intervalMs: this.intervalMs,
      },
      `ENOSPC answered to an NBD client writing region ${region}: the appliance's memory is full` +
        (suppressed > 0 ? ` (${suppressed} more since the last such line)` : '') +
        '; free memory (delete or trim regions) or give the appliance more --memory',
    );
  }
}
