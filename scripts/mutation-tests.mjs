#!/usr/bin/env node
// The test command of the mutation run: imports the given test files into this one process, so
// node's test runner runs them all here instead of in a child process per file. Every mutant runs
// the whole command, and on this machine starting processes is most of its cost. A failing test
// sets a non-zero exit code, which is all the command runner looks at.
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

for (const file of process.argv.slice(2)) await import(pathToFileURL(resolve(file)).href);
