/** `aether login [URL]` and `aether logout`: the saved target for every other client command. */
import type { Command } from 'commander';
import { read } from 'read';
import { Client } from '../client.js';
import { usageError } from '../exit.js';
import { out } from '../output.js';
import { loadClientConfig } from '../../config.js';
import { forget, normalizeUrl, save } from '../target.js';

export function loginCommands(program: Command): void {
  program
    .command('login')
    .description('check a server and token, and save them for the other commands')
    .argument('[url]', 'the Aether server or gateway (default: AETHER_URL, else http://127.0.0.1:8080)')
    .option('--token <token>', 'API token (AETHER_TOKEN); otherwise read from stdin, or asked for on a terminal')
    .addHelpText(
      'after',
      '\nSaved in ~/.config/aether/config.json (mode 0600; XDG_CONFIG_HOME moves it). The saved token is only sent to the saved URL.',
    )
    .action(async (rawUrl: string | undefined, opts: { token?: string }) => {
      const config = loadClientConfig();
      const url = normalizeUrl(rawUrl ?? config.url ?? config.local.url, rawUrl ? 'URL' : 'AETHER_URL');
      const token = (opts.token ?? config.token ?? (await readToken())).trim();
      if (!token) throw usageError('no token given: pass --token, set AETHER_TOKEN, or pipe it in (`aether login URL < token-file`)');
      // An authenticated call proves both the URL and the token before anything is saved.
      await new Client({ url, token, tokenSource: '`aether login`' }).json('GET', '/api/functions');
      save(config, { url, token });
      out(`Logged in to ${url} (saved in ${config.loginFile})\n`);
    });

  program
    .command('logout')
    .description('forget the saved server and token')
    .action(() => {
      const config = loadClientConfig();
      out(forget(config) ? `Removed ${config.loginFile}\n` : 'Not logged in.\n');
    });
}

async function readToken(): Promise<string> {
  if (process.stdin.isTTY) return read({ prompt: 'API token: ', silent: true, replace: '*', output: process.stderr });
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
