//! Checks the compiled descriptor set against the wire-contract tables in
//! `shared/contracts/*.md`, so a renamed field, a changed number or type, a missing RPC or
//! enum value fails CI. Our own extensions are allowed only the way DESIGN §6 allows them:
//! fields numbered 100 and up, enum values after the origin's last one, RPCs in our own services.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

#[derive(Debug, Default)]
struct Contract {
    files: BTreeMap<String, String>,
    services: BTreeMap<String, Vec<(String, String, String)>>,
    enums: BTreeMap<String, Vec<(String, i32)>>,
    messages: BTreeMap<String, Vec<ContractField>>,
}

#[derive(Debug)]
struct ContractField {
    number: i32,
    name: String,
    ty: String,
    label: String,
}

fn contracts_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TESSERA_CONTRACTS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/contracts")
}

fn ticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
}

fn parse(text: &str, c: &mut Contract) {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.strip_prefix("## file ") {
            let t = ticked(rest);
            c.files.insert(t[0].clone(), t[1].clone());
        } else if let Some(rest) = line.strip_prefix("### service ") {
            let name = ticked(rest).remove(0);
            let mut rpcs = Vec::new();
            i += 4;
            while i < lines.len() && lines[i].starts_with('|') {
                let row = cells(lines[i]);
                let strip = |s: &str| s.replace('`', "");
                rpcs.push((strip(&row[0]), strip(&row[1]), strip(&row[2])));
                i += 1;
            }
            c.services.insert(name, rpcs);
            continue;
        } else if let Some(rest) = line.strip_prefix("**enum ") {
            let name = ticked(rest).remove(0);
            let values = rest
                .split_once("**:")
                .expect("enum values")
                .1
                .split(',')
                .map(|v| {
                    let (n, num) = v.trim().split_once('=').expect("NAME=number");
                    (n.to_owned(), num.parse().expect("enum number"))
                })
                .collect();
            c.enums.insert(name, values);
        } else if let Some(rest) = line.strip_prefix("**message ") {
            let name = ticked(rest).remove(0);
            let mut fields = Vec::new();
            if !rest.contains("(no fields)") {
                i += 4;
                while i < lines.len() && lines[i].starts_with('|') {
                    let row = cells(lines[i]);
                    fields.push(ContractField {
                        number: row[0].parse().expect("field number"),
                        name: row[1].replace('`', ""),
                        ty: row[2].replace('`', ""),
                        label: row[3].replace('`', ""),
                    });
                    i += 1;
                }
                c.messages.insert(name, fields);
                continue;
            }
            c.messages.insert(name, fields);
        }
        i += 1;
    }
}

fn load_contract() -> Contract {
    let dir = contracts_dir();
    let mut c = Contract::default();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read contracts at {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no contract tables in {}", dir.display());
    for path in entries {
        parse(&std::fs::read_to_string(&path).expect("read contract"), &mut c);
    }
    c
}

#[derive(Default)]
struct Compiled<'a> {
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
}

fn index_message<'a>(prefix: &str, m: &'a DescriptorProto, out: &mut Compiled<'a>) {
    let full = format!("{prefix}.{}", m.name());
    for e in &m.enum_type {
        out.enums.insert(format!("{full}.{}", e.name()), e);
    }
    for n in &m.nested_type {
        index_message(&full, n, out);
    }
    out.messages.insert(full, m);
}

fn scalar(t: &str) -> Option<Type> {
    Some(match t {
        "double" => Type::Double,
        "float" => Type::Float,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "uint32" => Type::Uint32,
        "uint64" => Type::Uint64,
        "sint32" => Type::Sint32,
        "sint64" => Type::Sint64,
        "fixed32" => Type::Fixed32,
        "fixed64" => Type::Fixed64,
        "sfixed32" => Type::Sfixed32,
        "sfixed64" => Type::Sfixed64,
        "bool" => Type::Bool,
        "string" => Type::String,
        "bytes" => Type::Bytes,
        _ => return None,
    })
}

/// Renders a compiled field's type the way the contract tables write it.
fn render_type(f: &prost_types::FieldDescriptorProto, compiled: &Compiled) -> String {
    match f.r#type() {
        Type::Message | Type::Enum | Type::Group => {
            let name = f.type_name().trim_start_matches('.').to_owned();
            if let Some(m) = compiled.messages.get(&name)
                && m.options.as_ref().is_some_and(|o| o.map_entry())
            {
                let k = render_type(&m.field[0], compiled);
                let v = render_type(&m.field[1], compiled);
                return format!("map<{k}, {v}>");
            }
            name
        }
        other => {
            let s = [
                "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
                "sfixed32", "sfixed64", "bool", "string", "bytes",
            ];
            s.iter().find(|n| scalar(n) == Some(other)).map(|n| (*n).to_owned()).unwrap_or_else(|| format!("{other:?}"))
        }
    }
}

#[test]
fn descriptors_match_contract_tables() {
    let contract = load_contract();
    let fds = FileDescriptorSet::decode(tessera_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut compiled = Compiled::default();
    let mut services = BTreeMap::new();
    let mut files = BTreeMap::new();
    for file in &fds.file {
        files.insert(file.name().to_owned(), file.package().to_owned());
        let pkg = file.package();
        for e in &file.enum_type {
            compiled.enums.insert(format!("{pkg}.{}", e.name()), e);
        }
        for m in &file.message_type {
            index_message(pkg, m, &mut compiled);
        }
        for s in &file.service {
            services.insert(format!("{pkg}.{}", s.name()), s);
        }
    }

    let mut errors = Vec::new();
    let mut checked = 0usize;

    for (path, pkg) in &contract.files {
        match files.get(path) {
            Some(p) if p == pkg => {}
            Some(p) => errors.push(format!("file {path}: package {p}, contract says {pkg}")),
            None => errors.push(format!("file {path} (package {pkg}) is missing")),
        }
    }

    for (name, rpcs) in &contract.services {
        let Some(svc) = services.get(name) else {
            errors.push(format!("service {name} is missing"));
            continue;
        };
        if svc.method.len() != rpcs.len() {
            errors.push(format!(
                "service {name} has {} RPCs, contract has {} (new RPCs belong in tessera.* services)",
                svc.method.len(),
                rpcs.len()
            ));
        }
        for (rpc, req, resp) in rpcs {
            checked += 1;
            let Some(m) = svc.method.iter().find(|m| m.name() == rpc) else {
                errors.push(format!("{name}.{rpc} is missing"));
                continue;
            };
            let shape = |streaming: bool, ty: &str| {
                format!("{}{}", if streaming { "stream " } else { "" }, ty.trim_start_matches('.'))
            };
            let got_req = shape(m.client_streaming(), m.input_type());
            let got_resp = shape(m.server_streaming(), m.output_type());
            if &got_req != req || &got_resp != resp {
                errors.push(format!("{name}.{rpc}: ({got_req}) -> ({got_resp}), contract ({req}) -> ({resp})"));
            }
        }
    }

    for (name, values) in &contract.enums {
        let Some(e) = compiled.enums.get(name) else {
            errors.push(format!("enum {name} is missing"));
            continue;
        };
        let max = values.iter().map(|v| v.1).max().unwrap_or(0);
        for (vname, num) in values {
            checked += 1;
            match e.value.iter().find(|v| v.name() == vname) {
                Some(v) if v.number() == *num => {}
                Some(v) => errors.push(format!("{name}.{vname} = {}, contract says {num}", v.number())),
                None => errors.push(format!("{name}.{vname} is missing")),
            }
        }
        for v in &e.value {
            if !values.iter().any(|(n, _)| n == v.name()) && v.number() <= max {
                errors.push(format!("{name}.{} = {} is not appended after the origin's values", v.name(), v.number()));
            }
        }
    }

    for (name, fields) in &contract.messages {
        let Some(m) = compiled.messages.get(name) else {
            errors.push(format!("message {name} is missing"));
            continue;
        };
        for cf in fields {
            checked += 1;
            let Some(f) = m.field.iter().find(|f| f.number() == cf.number) else {
                errors.push(format!("{name}: field #{} {} is missing", cf.number, cf.name));
                continue;
            };
            if f.name() != cf.name {
                errors.push(format!("{name} #{}: named {}, contract says {}", cf.number, f.name(), cf.name));
            }
            let ty = render_type(f, &compiled);
            if ty != cf.ty {
                errors.push(format!("{name}.{}: type {ty}, contract says {}", cf.name, cf.ty));
            }
            let is_map = ty.starts_with("map<");
            let label = if f.proto3_optional() {
                "optional".to_owned()
            } else if let Some(idx) = f.oneof_index {
                format!("oneof {}", m.oneof_decl[idx as usize].name())
            } else if f.label() == Label::Repeated && !is_map {
                "repeated".to_owned()
            } else {
                String::new()
            };
            if label != cf.label {
                errors.push(format!("{name}.{}: label '{label}', contract says '{}'", cf.name, cf.label));
            }
        }
        for f in &m.field {
            if !fields.iter().any(|cf| cf.number == f.number()) && f.number() < 100 {
                errors.push(format!(
                    "{name}.{} #{}: extension fields must be numbered 100 and up",
                    f.name(),
                    f.number()
                ));
            }
        }
    }

    assert!(errors.is_empty(), "{} contract mismatches:\n{}", errors.len(), errors.join("\n"));
    assert!(checked > 500, "only {checked} contract items were checked: is the parser broken?");
}

#[test]
fn parser_reads_known_rows() {
    let mut c = Contract::default();
    parse(
        "## file `a.proto` — package `p`\n\n**message `p.M`**\n\n| # | field | type | label |\n|---|---|---|---|\n| 1 | `x` | `int32` | optional |\n| 2 | `y` | `map<string, string>` |  |\n\n**enum `p.E`**: A=0, B=1\n",
        &mut c,
    );
    let m = &c.messages["p.M"];
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].number, m[0].name.as_str(), m[0].label.as_str()), (1, "x", "optional"));
    assert_eq!(m[1].ty, "map<string, string>");
    assert_eq!(c.enums["p.E"], vec![("A".to_owned(), 0), ("B".to_owned(), 1)]);
    assert_eq!(c.files["a.proto"], "p");
}
