/** The client commands, in the order `aether --help` lists them. */
import type { Command } from 'commander';
import { deployCommand } from './deploy.js';
import { functionCommands } from './functions.js';
import { instancesCommand } from './instances.js';
import { invocationsCommand } from './invocations.js';
import { invokeCommand } from './invoke.js';
import { loginCommands } from './login.js';
import { logsCommand } from './logs.js';

export function clientCommands(program: Command): void {
  deployCommand(program);
  invokeCommand(program);
  logsCommand(program);
  functionCommands(program);
  instancesCommand(program);
  invocationsCommand(program);
  loginCommands(program);
}
