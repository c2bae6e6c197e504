/** The environment of a real `aws` CLI run against Aether: the test's key, its own HOME (no user config), no pager. */
export function awsCliEnv(home: string, key: { accessKeyId: string; secretAccessKey: string }): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    AWS_ACCESS_KEY_ID: key.accessKeyId,
    AWS_SECRET_ACCESS_KEY: key.secretAccessKey,
    AWS_DEFAULT_REGION: 'us-west-2',
    AWS_PAGER: '',
  };
}
