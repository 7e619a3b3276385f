# bash completion for schedctl: commands, their options, and the ids of the caller's jobs.
# Commands and options are read from `schedctl COMMAND --help` (so they follow the installed
# version); job ids from `schedctl queue --me` (only the caller's own jobs, running and waiting);
# node names from `schedctl --json nodes`.

_schedctl_opts() {
    # The options a --help text lists, e.g. "  -p NAME[,NAME], --property NAME[,NAME]".
    "$1" $2 --help 2>/dev/null | sed -n 's/^  \(-[-a-zA-Z]\)/\1/p' | tr ',' '\n' |
        sed -n 's/^ *\(--\{0,1\}[a-zA-Z][-a-zA-Z]*\).*/\1/p'
}

_schedctl_commands() {
    # The COMMAND list of `schedctl --help`: its lines "    name   help" (or "    name (alias)").
    "$1" --help 2>/dev/null | sed -n 's/^    \([a-z][-a-z]*\).*/\1/p'
}

_schedctl_job_ids() {
    "$1" queue --me 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }'
}

_schedctl_node_names() {
    "$1" --json nodes 2>/dev/null | python3 -c 'import json, sys; print(*(n["Name"] for n in json.load(sys.stdin)))' 2>/dev/null
}

_schedctl() {
    local cur prev cmd i prog=${COMP_WORDS[0]}
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --) break ;;
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$(_schedctl_opts "$prog" "")" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_schedctl_commands "$prog")" -- "$cur"))
        fi
        return 0
    fi
    case $prev in
        --file|--output|--error|-o|-e|--chdir|-D) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        --state) COMPREPLY=($(compgen -W "PENDING HELD RUNNING SUSPENDED COMPLETED FAILED CANCELLED" -- "${cur##*,}")); return 0 ;;
        -u|--user) [[ $cmd == queue || $cmd == list ]] && { COMPREPLY=($(compgen -u -- "$cur")); return 0; } ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_schedctl_opts "$prog" "$cmd")" -- "$cur"))
        return 0
    fi
    case $cmd in
        show|cancel|hold|release|suspend|resume|requeue|wait|logs|monitor)
            COMPREPLY=($(compgen -W "$(_schedctl_job_ids "$prog")" -- "$cur")) ;;
        submit)
            COMPREPLY=($(compgen -c -- "$cur")) ;;
        drain|undrain)
            COMPREPLY=($(compgen -W "$(_schedctl_node_names "$prog")" -- "$cur")) ;;
        node)
            if [[ $prev == node ]]; then
                COMPREPLY=($(compgen -W "drain resume remove" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$(_schedctl_node_names "$prog")" -- "$cur"))
            fi ;;
    esac
    return 0
}
complete -F _schedctl schedctl
