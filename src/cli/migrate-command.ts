/**
 * `memfabric region migrate NAME --to URL [--as NAME]`: asks the appliance that holds region
 * NAME to move it to the appliance at URL (appliance/migration.ts), then follows the migration
 * round by round until it is done or failed.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { adminRequest, type AdminTarget } from '../appliance/admin-client.js';
import type { MigrationStatus } from '../appliance/migration.js';
import { ErrorCodes, MemfabricError, type ErrorCode } from '../errors.js';
import { applianceUrlDefault, applianceUrlOption, normalizeApplianceUrl } from './appliance-url.js';
import { adminTargetFor, findToken, withCredentials, type CredentialOptions } from './credentials.js';
import { byteProgress, type ProgressBar } from './progress.js';

/** How often the migration's status is polled, and for how long at most by default. */
export const MIGRATE_POLL_MS = 100;
export const MIGRATE_WAIT_S_DEFAULT = 3600;

interface MigrateCommandOptions {
  to: string;
  as?: string;
  maxRounds?: number;
  maxDowntime?: number;
  wait: boolean;
  timeout: number;
  /** The target's token (else --to-token-file, else the state-dir file for its port). */
  toToken?: string;
  toTokenFile?: string;
}

function wholeNumber(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('must be a whole number');
  return n;
}

/** Adds `migrate` under the `region` command. */
export function registerMigrateCommand(region: Command): void {
  withCredentials(region.command('migrate <name>'))
    .description('move a region to another appliance while its clients keep using it')
    .requiredOption(
      '--to <url>',
      "the target appliance's admin API, e.g. http://10.0.0.2:10880 (or 10.0.0.2:10880)",
      (value: string) => normalizeApplianceUrl(value, '--to'),
    )
    .option('--as <name>', 'the region name on the target (default: the same)')
    .option('--max-rounds <n>', 'pre-copy rounds at most before the blackout', wholeNumber)
    .option(
      '--max-downtime <ms>',
      'the blackout to aim for: it starts once the measured bandwidth sends the dirty pages within it (default 30)',
      wholeNumber,
    )
    .option('--to-token <token>', "the target appliance's token, passed on to the source appliance")
    .option('--to-token-file <file>', "file holding the target appliance's token")
    .option('--no-wait', 'start the migration and return')
    .option('--timeout <seconds>', 'give up waiting after this long', wholeNumber, MIGRATE_WAIT_S_DEFAULT)
    .option(
      '--appliance <url>',
      'the admin API of the appliance that holds the region (default: MEMFABRIC_APPLIANCE, else http://127.0.0.1:10880)',
      applianceUrlOption,
      applianceUrlDefault(),
    )
    .action(async (name: string, options: MigrateCommandOptions & CredentialOptions) => {
      const source = await adminTargetFor(options);
      // The target's token goes to the source appliance, which calls the target with it.
      const toToken = await findToken(
        options.to,
        {
          ...(options.toToken !== undefined ? { token: options.toToken } : {}),
          ...(options.toTokenFile !== undefined ? { tokenFile: options.toTokenFile } : {}),
        },
        // MEMFABRIC_TOKEN(_FILE) are the source's; the target's token comes from flags or its port.
        { ...process.env, MEMFABRIC_TOKEN: '', MEMFABRIC_TOKEN_FILE: '' },
      );
      await runMigrate(
        name,
        { ...options, ...(toToken !== undefined ? { toToken } : {}), appliance: source },
        (line) => console.log(line),
      );
    });
}

export async function runMigrate(
  name: string,
  options: MigrateCommandOptions & { appliance: string | AdminTarget },
  out: (line: string) => void,
  /** Makes the bar of one round (a silent one off a terminal, see progress.ts). */
  bar: (label: string, totalBytes: number) => ProgressBar = byteProgress,
): Promise<MigrationStatus> {
  const path = `/v1/regions/${encodeURIComponent(name)}`;
  let status = await adminRequest<MigrationStatus>(options.appliance, 'POST', `${path}/migrate`, {
    target: options.to,
    ...(options.as !== undefined ? { targetName: options.as } : {}),
    ...(options.toToken !== undefined ? { targetToken: options.toToken } : {}),
    ...(options.maxRounds !== undefined ? { maxRounds: options.maxRounds } : {}),
    ...(options.maxDowntime !== undefined ? { maxDowntimeMs: options.maxDowntime } : {}),
  });
  out(`migrating ${name} to ${status.target.appliance} as ${status.target.region} (${status.id})`);
  if (!options.wait) return status;
  const polls = Math.ceil((options.timeout * 1000) / MIGRATE_POLL_MS);
  let reported = 0;
  // One bar per round (and one for the blackout): its bytes so far against what is left of it.
  let current: { key: string; bar: ProgressBar } | undefined;
  let finishedBytes = 0;
  const stopBar = (): void => {
    current?.bar.stop();
    current = undefined;
  };
  try {
    for (let poll = 0; poll < polls; poll++) {
      for (; reported < status.rounds.length; reported++) {
        const round = status.rounds[reported]!;
        finishedBytes += round.bytes;
        stopBar();
        out(`round ${round.round}: ${round.pages} pages in ${round.ms} ms`);
      }
      if (status.state === 'copying' || status.state === 'blackout') {
        const key = status.state === 'blackout' ? 'blackout' : `round ${status.round}`;
        const done = Math.max(0, status.bytesSent - finishedBytes);
        // Bytes a page costs on the wire so far (data and request headers; zero pages cost less).
        const perPage = status.pagesCopied > 0 ? status.bytesSent / status.pagesCopied : 4096;
        const total = Math.round(done + status.dirtyRemaining * perPage);
        if (current?.key !== key) {
          stopBar();
          current = { key, bar: bar(`${name}: ${key}`, total) };
        }
        current.bar.update(done, total);
      }
      if (status.state !== 'copying' && status.state !== 'blackout') stopBar();
      if (status.state === 'done') {
        const moved = status.movedTo!;
        out(
          `moved ${name} to ${moved.appliance} as ${moved.region} (nbd://${moved.nbd.host}:${moved.nbd.port}/${moved.region}): ` +
            `${status.rounds.length} rounds, ${status.pagesCopied} pages, blackout ${status.blackout!.pages} pages in ${status.blackout!.ms} ms`,
        );
        return status;
      }
      if (status.state === 'failed') {
        throw new MemfabricError(
          status.error!.code as ErrorCode,
          `migrating ${name} failed; it stays where it was: ${status.error!.message}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, MIGRATE_POLL_MS));
      status = await adminRequest<MigrationStatus>(options.appliance, 'GET', `${path}/migration`);
    }
  } finally {
    stopBar();
  }
  throw new MemfabricError(
    ErrorCodes.TIMEOUT,
    `migration of ${name} still ${status.state} after ${options.timeout} s; follow it with GET ${path}/migration`,
  );
}
