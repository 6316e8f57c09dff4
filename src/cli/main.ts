/**
 * The `memfabric` command line. Each subcommand lives in its own module; this file only wires
 * them to commander.
 */
import { Command, InvalidArgumentError } from 'commander';
import { MemfabricError, parseSize } from '../index.js';
import { runDemo } from './demo.js';

function sizeOption(value: string): number {
  try {
    return parseSize(value);
  } catch (error) {
    throw new InvalidArgumentError(error instanceof Error ? error.message : String(error));
  }
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
  .showHelpAfterError();

program
  .command('demo')
  .description('fork a space into clones, write, merge identical pages and print the savings')
  .option('--clones <n>', 'number of clones', countOption, 8)
  .option('--size <size>', 'size of the parent space', sizeOption, 16 * 1024 * 1024)
  .action((options: { clones: number; size: number }) => {
    runDemo({ clones: options.clones, sizeBytes: options.size, out: (line) => console.log(line) });
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof MemfabricError) {
    console.error(`memfabric: ${error.message} (${error.code})`);
    process.exit(2);
  }
  throw error;
}
