/**
 * The `memfabric` command line. Each subcommand lives in its own module; this file only wires
 * them to commander.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { MemfabricError, formatSize, parseSize } from '../index.js';
import { runDemo } from './demo.js';
import { applianceDefaults, runAppliance } from './appliance-command.js';
import {
  applianceStats,
  formatRegions,
  formatStats,
  regionClone,
  regionCreate,
  regionList,
  regionRemove,
} from './admin-commands.js';
import { registerMigrateCommand } from './migrate-command.js';
import { registerChunkCommands } from './chunk-commands.js';
import { registerHeapCommands } from './heap-commands.js';
import { registerFabricCommands } from './fabric-commands.js';
import { registerControllerCommand } from './controller-command.js';
import { describeError } from './describe-error.js';
import { applianceUrlDefault, applianceUrlOption } from './appliance-url.js';
import { adminTargetFor, withCredentials, type CredentialOptions } from './credentials.js';

function sizeOption(value: string): number {
  try {
    return parseSize(value);
  } catch (error) {
    throw new InvalidArgumentError(error instanceof Error ? error.message : String(error));
  }
}

/** A size option whose default --help shows as a size ("1 GiB"), not a byte count. */
function sizeWithDefault(flags: string, description: string, bytes: number): Option {
  return new Option(flags, description).argParser(sizeOption).default(bytes, formatSize(bytes));
}

function secondsOption(value: string): number {
  const seconds = Number(value);
  if (value.trim() === '' || !Number.isFinite(seconds) || seconds < 0) {
    throw new InvalidArgumentError('must be a number of seconds, 0 or more (0 turns the timeout off)');
  }
  return seconds;
}

function positiveIntegerOption(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number, 1 or more');
  return n;
}

function countOption(value: string): number {
  const count = Number(value);
  if (!Number.isInteger(count) || count < 2 || count > 256) {
    throw new InvalidArgumentError('must be a whole number from 2 to 256');
  }
  return count;
}

const program = new Command()
  .name('memfabric')
  .description('A memory fabric for Node.js: paged, copy-on-write, merged, served over NBD.')
  // package.json is two levels up from both src/cli/ and dist/cli/.
  .version(
    (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
      .version,
  )
  .showHelpAfterError();

program
  .command('demo')
  .description('fork a space into clones, write, merge identical pages and print the savings')
  .option('--clones <n>', 'number of clones', countOption, 8)
  .addOption(sizeWithDefault('--size <size>', 'size of the parent space', 16 * 1024 * 1024))
  .action((options: { clones: number; size: number }) => {
    runDemo({ clones: options.clones, sizeBytes: options.size, out: (line) => console.log(line) });
  });

program
  .command('appliance')
  .description('run a memory appliance: regions served over NBD, an HTTP admin API and dashboard')
  .option('--nbd <host:port>', 'where NBD listens', applianceDefaults.nbd)
  .option('--http <host:port>', 'where the admin API and dashboard listen', applianceDefaults.http)
  .addOption(
    sizeWithDefault('--memory <size>', 'memory budget for all regions', parseSize(applianceDefaults.memory)),
  )
  .option('--data-dir <dir>', 'directory for file-backed regions (loaded at start)')
  .option(
    '--default-region <name>',
    "region served for the empty export name ('' for none)",
    applianceDefaults.defaultRegion,
  )
  .option(
    '--default-size <size>',
    'size of the default region if it is created (default: the memory budget)',
    sizeOption,
  )
  .addOption(sizeWithDefault('--page-size <bytes>', 'page size: a power of two from 512 to 65536', 4096))
  .option('--no-merge', 'turn off background same-page merging')
  .option('--merge-cpu <share>', 'share of one core the background merger uses, 0.001 to 1 (default 0.1)')
  .option('--log-level <level>', 'pino log level', 'info')
  .option(
    '--nbd-max-connections <n>',
    'NBD connections at once; more are refused (default: from the open-file limit, at most 1024)',
    positiveIntegerOption,
  )
  .option(
    '--nbd-buffer-budget <size>',
    'reply and write-payload bytes all NBD connections may hold together (default 128MiB)',
    sizeOption,
  )
  .option(
    '--nbd-handshake-timeout <seconds>',
    'longest pause between NBD handshake options (default 30; 0 off)',
    secondsOption,
  )
  .option(
    '--nbd-idle-timeout <seconds>',
    'close NBD connections idle this long after the handshake (default 0: never)',
    secondsOption,
  )
  .option(
    '--nbd-stall-timeout <seconds>',
    'close a connection whose write payload or unread replies stop moving this long (default 30; 0 off)',
    secondsOption,
  )
  .addOption(
    new Option('--tls <mode>', 'NBD TLS: off, on (optional) or require').choices(['off', 'on', 'require']),
  )
  .option('--tls-certificates <dir>', 'X.509: ca-cert.pem, server-cert.pem, server-key.pem (qemu-nbd layout)')
  .option('--tls-psk <file>', 'TLS-PSK keys, identity:hexkey per line (psktool); the identity is the tenant')
  .option(
    '--tls-verify-peer',
    'X.509: require a client certificate signed by ca-cert.pem (its CN is the tenant)',
  )
  .option(
    '--tls-admin <identity>',
    'a TLS identity that sees every tenant (repeatable)',
    (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
  )
  .option(
    '--token-file <file>',
    'admin token file, created (mode 0600) if missing (default: DATA_DIR/admin.token, else a per-user file for the port)',
  )
  .option(
    '--tenant-tokens <file>',
    'JSON file of tenant tokens, {"tenant": "token"} (default: DATA_DIR/tenants.json)',
  )
  .option('--http-tls-cert <file>', 'serve the admin API over HTTPS with this certificate (PEM)')
  .option('--http-tls-key <file>', "the certificate's private key (PEM)")
  .option('--peer-ca <file>', "CA certificate(s) trusted when calling another appliance's https admin API")
  .option(
    '--read-access <mode>',
    "'open': loopback clients read without a token; 'token': every call needs one",
    'open',
  )
  .option('--etcd <urls>', 'fleet mode: register in etcd at these client URLs (comma-separated)')
  .option('--etcd-ttl <seconds>', 'lease TTL of the etcd registration (default 5)', positiveIntegerOption)
  .option('--no-controller', 'fleet mode: run no fleet controller candidate in this appliance')
  .action(runAppliance);

const appliance = (command: Command) =>
  withCredentials(
    command.option(
      '--appliance <url>',
      'the appliance admin API, http://HOST:PORT or HOST:PORT (default: MEMFABRIC_APPLIANCE, else http://127.0.0.1:10880)',
      applianceUrlOption,
      applianceUrlDefault(),
    ),
  );

const region = program.command('region').description('manage regions on an appliance');
appliance(region.command('create <name>'))
  .description('create a region (usable at once; memory is taken only as it is written)')
  .requiredOption('--size <size>', 'virtual size, e.g. 1GiB or 1TiB')
  .option('--tenant <tenant>', 'trust domain: pages are merged only within a tenant')
  .option('--read-only', 'refuse writes')
  .option('--file', "back the region with a file in the appliance's data directory")
  .action(
    async (
      name: string,
      options: { size: string; tenant?: string; readOnly?: boolean; file?: boolean } & CredentialOptions,
    ) => {
      const created = await regionCreate(await adminTargetFor(options), name, options);
      for (const warning of created.warnings ?? []) console.error(`warning: ${warning}`);
      console.log(formatRegions([created]));
    },
  );
appliance(region.command('ls'))
  .description('list regions')
  .option('--json', 'print JSON')
  .action(async (options: CredentialOptions & { json?: boolean }) => {
    const regions = await regionList(await adminTargetFor(options));
    console.log(options.json ? JSON.stringify(regions, null, 2) : formatRegions(regions));
  });
appliance(region.command('clone <source> <name>'))
  .description('make a copy-on-write clone of a region')
  .option('--read-only', 'make the clone read-only')
  .action(async (source: string, name: string, options: CredentialOptions & { readOnly?: boolean }) => {
    console.log(
      formatRegions([
        await regionClone(await adminTargetFor(options), source, name, options.readOnly ?? false),
      ]),
    );
  });
appliance(region.command('rm <name>'))
  .description('delete a region and free its memory')
  .action(async (name: string, options: CredentialOptions) => {
    await regionRemove(await adminTargetFor(options), name);
    console.log(`deleted ${name}`);
  });
registerMigrateCommand(region);
registerChunkCommands(region, appliance);
appliance(program.command('stats'))
  .description("print an appliance's statistics (memory, regions, merging, NBD traffic)")
  .option('--json', 'print every statistic as JSON')
  .action(async (options: CredentialOptions & { json?: boolean }) => {
    const stats = await applianceStats(await adminTargetFor(options));
    console.log(options.json ? JSON.stringify(stats, null, 2) : formatStats(stats as never));
  });
registerHeapCommands(program);
registerFabricCommands(program);
registerControllerCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof MemfabricError) {
    console.error(describeError(error));
    process.exit(2);
  }
  throw error;
}
