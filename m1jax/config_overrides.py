"""`--config=configs/x.py[:variants]` flags whose `--config.a.b=v` overrides are checked.

ml_collections' `config_flags.DEFINE_config_file` loads the file, then walks the config for
every `--config.a.b=v`; a key the config lacks surfaces as a bare AttributeError traceback.
`define_config_file` defines the same flag, but checks every override key against the
loaded config before ml_collections applies any, and names the unknown key, the level it
was looked up at and that level's valid keys:

  _CONFIG = config_overrides.define_config_file("config", "configs/tiny.py", "...")
  app.run(main, flags_parser=config_overrides.parse_flags)

Imports absl and ml_collections only; the checks are pure functions of (config, argv).
"""
import difflib
import re
import sys
import textwrap

from absl import flags
import ml_collections
from ml_collections import config_flags

# Flags defined through define_config_file belong to its caller (shown by its --help).
flags.disclaim_key_flags()


def override_keys(argv: list[str], name: str = "config") -> list[str]:
  """The dotted keys of every `--name.a.b=v`, `--name.a.b v` or `--noname.a.b` in argv.

  The same arguments ml_collections treats as overrides, in order, repeats kept.
  """
  pattern = re.compile(r"-{1,2}(no)?" + re.escape(name) + r"\.")
  return [arg.split("=", 1)[0].split(".", 1)[1] for arg in argv if pattern.match(arg)]


def unknown_override_keys(config, argv: list[str], name: str = "config") -> list[str]:
  """One message per `--name.a.b=v` in argv whose key path `config` does not have."""
  problems = []
  for dotted in dict.fromkeys(override_keys(argv, name)):
    node, walked = config, []
    for part in dotted.split("."):
      # `a[0]` indexes a list-valued field; only the field name can be checked here.
      key = part.split("[", 1)[0]
      where = ".".join(walked) or "the config"
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        problems.append(f"unknown config key {dotted!r} in --{name}.{dotted}: {where} is a "
                        f"value ({type(node).__name__}), not a section; it has no {key!r}")
        break
      if key not in node:
        valid = sorted(node.keys())
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(f"unknown config key {dotted!r} in --{name}.{dotted}: {where} has no "
                        f"{key!r}{hint} (valid: {', '.join(valid)})")
        break
      node, walked = node[key], walked + [key]
      if key != part:
        break
  return problems


class _CheckedConfigFileParser(flags.ArgumentParser):
  """ml_collections' config file parser, plus the override check between load and apply.

  ml_collections applies overrides right after this parser returns, reading them from
  `sys_argv` (or sys.argv at parse time); the check reads the same argv.
  """

  def __init__(self, inner: flags.ArgumentParser, name: str, default: str | None,
               sys_argv: list[str] | None):
    self.inner = inner
    self.name = name
    self.default = default
    self.sys_argv = sys_argv

  def parse(self, argument):
    config = self.inner.parse(argument)
    # ml_collections defers a missing file's IOError to the first access; let it.
    if isinstance(config, ml_collections.ConfigDict):
      argv = sys.argv if self.sys_argv is None else self.sys_argv
      argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
      problems = unknown_override_keys(config, argv, self.name)
      if problems:
        # absl turns a ValueError here into "flag --config=<path>: <message>".
        raise ValueError("\n".join(problems))
    return config

  def flag_type(self):
    return self.inner.flag_type()


def define_config_file(name: str, default: str | None, help_string: str,
                       flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: list[str] | None = None) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` whose override keys are checked; see the module doc.

  The default is applied by `parse_flags`, not here: ml_collections would load a default
  at definition (import) time, applying sys.argv's overrides before any check could run.

  Args:
    name: the flag name ("config" gives `--config=...` and `--config.a.b=v`).
    default: the config file used when argv names none, or None.
    help_string: the flag's help; the default is shown after it.
    flag_values: where to define the flag.
    sys_argv: the argv ml_collections and the check read overrides from (default
      sys.argv); tests pass their own.

  Returns:
    The flag holder; `.value` is the config once parsed.
  """
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           sys_argv=sys_argv)
  flag = flag_values[name]
  flag.parser = _CheckedConfigFileParser(flag.parser, name, default, sys_argv)
  flag.default_as_str = repr(default)
  return holder


def _names_flag(argv: list[str], name: str) -> bool:
  pattern = re.compile(r"^-{1,2}" + re.escape(name) + r"(=|$)")
  return any(pattern.match(arg) for arg in argv)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """An absl `flags_parser` for app.run: applies defaults of checked config flags, parses.

  A flag error (an unknown override key among them) is printed as absl prints one, and
  exits with status 1.

  Returns:
    The arguments left after the flags, argv[0] first.
  """
  argv = list(argv)
  for flag_name in list(flag_values):
    parser = flag_values[flag_name].parser
    if (isinstance(parser, _CheckedConfigFileParser) and parser.default is not None
        and not _names_flag(argv, parser.name)):
      # Right after the program name: ml_collections refuses overrides before --config.
      argv.insert(1, f"--{parser.name}={parser.default}")
  try:
    return flag_values(argv)
  except flags.Error as error:
    # absl's own layout (app.parse_flags_with_usage), which serves only the global FLAGS.
    message = str(error)
    message = f"\n{textwrap.indent(message, '  ')}" if "\n" in message else f" {message}"
    sys.stderr.write(f"FATAL Flags parsing error:{message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
